// Downloads a whole repo with @huggingface/hub's snapshotDownload (the JS client's download path,
// into a huggingface_hub-style cache dir), for bench/transfer/run.sh.
//   node hf_hub_download.mjs HUB_URL REPO CACHE_DIR
import { snapshotDownload } from "@huggingface/hub";

const [hubUrl, repo, cacheDir] = process.argv.slice(2);
await snapshotDownload({ repo: { type: "model", name: repo }, cacheDir, hubUrl });
