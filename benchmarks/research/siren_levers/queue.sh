#!/bin/bash
# run lines of a queue file sequentially: "NAME VOLUME RATIO opts..." ; skip if results/NAME.json exists
export PYTHONPATH=${BASE_SRC:-/tmp/base/src}${PYTHONPATH:+:$PYTHONPATH}
while read -r line; do
  [ -z "$line" ] && continue; [[ "$line" == \#* ]] && continue
  set -- $line
  [ -f results/$1.json ] && continue
  nice -n 5 python harness.py "$@" 2>&1 | grep -v USDT >> logs/$1.log
  tail -1 logs/$1.log
done < "$1"
