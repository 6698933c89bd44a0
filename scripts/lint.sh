#!/usr/bin/env bash
# Runs clang-tidy 14 with the project's .clang-tidy (shared/STYLE.md's checks) over the .cpp files
# of a build's compile_commands.json, and fails if any file has a finding.
#
#   scripts/lint.sh [-p BUILD_DIR] [-j N] [--max-files N] [--all | --base REV] [FILE…]
#
# Which files:
#   --all        every linted .cpp of the compile database (the whole tree: several minutes on
#                two cores, see docs/architecture.md "Checks"; not run by CI).
#   FILE…        these files (a header stands for a .cpp, as below).
#   default      "the changed tree": the files that differ between REV and the working tree
#                (what the commits since REV changed, plus uncommitted and untracked files). REV
#                is --base, else $MODELCACHE_LINT_BASE, else HEAD~1: the last commit and the
#                work in progress. On a branch, MODELCACHE_LINT_BASE=main lints the branch.
# --max-files N: skip (exit 77, saying how to run it) when more than N files (or
# $MODELCACHE_LINT_MAX_FILES) would be checked: the ctest's bound on a large merge.
# A changed header is checked through its own .cpp (foo.h -> foo.cpp beside it), else through one
# .cpp that includes it: clang-tidy reports a header's findings in any file that includes it
# (HeaderFilterRegex). Files that include a changed header are not all re-checked.
#
# Linted: the .cpp files of the production folders (common crds store fetch shard reconcilers
# controller daemon cli) and of tests/fixtures (the imitation servers the tests and the demo run).
# The gtest files and bench/ are not: their checks would cost more than the rest of the tree
# together (googletest and google-benchmark headers), for code that does not ship. A line that
# must stay as it is carries `// NOLINT(check-name): why`.
#
# BUILD_DIR: -p, else $MODELCACHE_LINT_BUILD, else build/; it must hold compile_commands.json
# (CMAKE_EXPORT_COMPILE_COMMANDS, on in CMakeLists.txt) and the generated headers, i.e. a
# configured and built tree. Exits 0 when clean, 1 on findings or errors, 2 on bad usage, and
# 77 (ctest's "skipped") when there is nothing to compare (no git checkout) or no clang-tidy 14.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${MODELCACHE_LINT_BUILD:-$here/build}"
base="${MODELCACHE_LINT_BASE:-HEAD~1}"
jobs=1
max_files="${MODELCACHE_LINT_MAX_FILES:-}"
all=0
files=()
while [ $# -gt 0 ]; do
  case "$1" in
    -p) build="$2"; shift 2 ;;
    -j) jobs="$2"; shift 2 ;;
    -j[0-9]*) jobs="${1#-j}"; shift ;;
    --all) all=1; shift ;;
    --base) base="$2"; shift 2 ;;
    --max-files) max_files="$2"; shift 2 ;;
    -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "lint: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) files+=("$1"); shift ;;
  esac
done

tidy="${CLANG_TIDY:-}"
if [ -z "$tidy" ]; then
  for candidate in clang-tidy-14 clang-tidy; do
    if command -v "$candidate" >/dev/null 2>&1; then tidy="$candidate"; break; fi
  done
fi
if [ -z "$tidy" ] || ! "$tidy" --version 2>/dev/null | grep -q 'version 14\.'; then
  echo "lint: skipped: no clang-tidy 14 (scripts/install-deps.sh installs Debian's clang-tidy)"
  exit 77
fi
db="$build/compile_commands.json"
if [ ! -f "$db" ]; then
  echo "lint: $db not found: configure and build first (scripts/build.sh)" >&2
  exit 2
fi

# The linted .cpp files of the compile database, relative to the source tree.
mapfile -t known < <(grep -o '"file": *"[^"]*"' "$db" | sed 's/^"file": *"//; s/"$//' |
  sed -n "s|^$here/||p" |
  grep -E '^(common|crds|store|fetch|shard|reconcilers|controller|daemon|cli|tests/fixtures)/.*\.cpp$' |
  sort -u)
declare -A in_db=()
for f in "${known[@]}"; do in_db["$f"]=1; done

# foo.h -> foo.cpp beside it if compiled, else the first compiled .cpp that includes it.
cpp_for_header() {
  local header="$1" own="${1%.h}.cpp"
  if [ -n "${in_db[$own]:-}" ]; then echo "$own"; return; fi
  (cd "$here" && grep -lF "#include \"$header\"" "${known[@]}" 2>/dev/null | head -1) || true
}

if [ "$all" -eq 1 ]; then
  targets=("${known[@]}")
  scope="the whole tree"
else
  if [ ${#files[@]} -eq 0 ]; then
    if ! git -C "$here" rev-parse --git-dir >/dev/null 2>&1; then
      echo "lint: skipped: $here is not a git checkout, so there is no changed tree (use --all)"
      exit 77
    fi
    if ! git -C "$here" rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
      echo "lint: skipped: base revision $base does not exist (a shallow clone? set" \
        "MODELCACHE_LINT_BASE or use --all)"
      exit 77
    fi
    mapfile -t files < <(cd "$here" && { git diff --name-only --diff-filter=d "$base" --;
                                         git ls-files --others --exclude-standard; } | sort -u)
    scope="the files changed since $base"
  else
    scope="the files given"
  fi
  declare -A picked=()
  for f in "${files[@]}"; do
    f="${f#./}"
    case "$f" in
      *.cpp) [ -n "${in_db[$f]:-}" ] && picked["$f"]=1 ;;
      *.h) c="$(cpp_for_header "$f")"; [ -n "$c" ] && picked["$c"]=1 ;;
    esac
  done
  targets=()
  if [ ${#picked[@]} -gt 0 ]; then
    mapfile -t targets < <(printf '%s\n' "${!picked[@]}" | sort)
  fi
fi

if [ ${#targets[@]} -eq 0 ]; then
  echo "lint: no C++ file to check in $scope"
  exit 0
fi
if [ -n "$max_files" ] && [ ${#targets[@]} -gt "$max_files" ]; then
  echo "lint: skipped: ${#targets[@]} files in $scope, more than $max_files (up to half a" \
    "minute each); run scripts/lint.sh -p $build --base $base -j2 by hand"
  exit 77
fi
echo "lint: $tidy on ${#targets[@]} file(s), $scope, -j$jobs"

# One clang-tidy per file, N at a time; each prints its time, and its findings if any.
# -Wno-unknown-warning-option: the GCC-only flags of the build (-Wno-dangling-pointer).
log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT
check_one() {
  local f="$1" out status start
  out="$log/$(echo "$f" | tr / _).out"
  start=$(date +%s%N)
  if (cd "$here" && "$tidy" -p "$build" --quiet --extra-arg=-Wno-unknown-warning-option "$f") \
      >"$out" 2>&1; then status=ok; else status=FAIL; fi
  printf 'lint: %-4s %5d ms %s\n' "$status" $((($(date +%s%N) - start) / 1000000)) "$f"
  if [ "$status" = FAIL ]; then
    grep -v 'warnings\( and [0-9]* errors\)\{0,1\} generated\.$\|^Suppressed \|^Use -header-filter' \
      "$out" || true
  fi
  [ "$status" = ok ]
}
export -f check_one
export tidy here build log
if printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'check_one "$1"' _ {}; then
  echo "lint: clean"
  exit 0
fi
echo "lint: findings above (the check names are in brackets; .clang-tidy, shared/STYLE.md)"
exit 1
