#!/usr/bin/env bash
# load_dotenv FILE: exports each NAME=VALUE line of FILE whose NAME is not set
# in the environment already, so a real environment variable always wins over
# the file (as the functions and finapp-admin do, through dotenvy). Blank lines
# and '#' comments are skipped; one pair of surrounding quotes is removed.
load_dotenv() {
  local file=$1 line name value
  [ -f "$file" ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line#"${line%%[![:space:]]*}"}"
    [[ -z "$line" || "$line" == \#* ]] && continue
    line="${line#export }"
    name="${line%%=*}"
    value="${line#*=}"
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ && "$line" == *=* ]] || continue
    if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
      value="${BASH_REMATCH[1]}"
    fi
    [ -n "${!name+x}" ] || export "$name=$value"
  done <"$file"
}
