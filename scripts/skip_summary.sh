#!/usr/bin/env bash
# make test's closing line: which test groups skipped (from the log kiln-testkit appends to, $1) and how to run
# them, so that a local green run without PostgreSQL or the Python reference tools is not taken for a full one.
set -euo pipefail
log=${1:?usage: skip_summary.sh SKIP_LOG}
if [[ ! -s $log ]]; then
    echo "make test: no test group was skipped (PostgreSQL and the Python reference tools ran)."
    exit 0
fi
how() {
    case $1 in
        postgres) echo "install PostgreSQL's server (initdb, pg_ctl on PATH or in /usr/lib/postgresql/*/bin) and rerun with KILN_REQUIRE_POSTGRES=1" ;;
        python) echo "give python3 with venv and access to PyPI (or KILN_VENV_DIR with the environments built) and rerun with KILN_REQUIRE_PYTHON=1" ;;
        *) echo "see the SKIPPED lines above" ;;
    esac
}
summary=""
for group in $(cut -f1 "$log" | sort -u); do
    tests=$(awk -F'\t' -v g="$group" '$1 == g {print $2}' "$log" | sort -u | paste -sd, - | sed 's/,/, /g')
    count=$(awk -F'\t' -v g="$group" '$1 == g {print $2}' "$log" | sort -u | wc -l)
    summary+="  $group: $count test(s) skipped ($tests); to run them, $(how "$group")"$'\n'
done
printf 'make test: NOT a full run, these groups skipped:\n%s' "$summary"
