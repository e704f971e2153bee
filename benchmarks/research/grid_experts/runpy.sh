#!/bin/bash
# usage: ./runpy.sh VOLUME RATIO key=value ...   (one thread, nice 5)
cd "$(dirname "$0")"
export PYTHONPATH=${BASE_SRC:-/tmp/base/src}${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec nice -n 5 python run.py "$@"
