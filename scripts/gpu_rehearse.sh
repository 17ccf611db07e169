#!/usr/bin/env bash
# Rehearses the GPU checks on this CPU in the device's software: Python 3.12, torch 2.11 (the PyPI
# build; it runs on a CPU) and the device image's packages that this project imports, with nothing
# else but what scripts/gpu_prepare.sh packed into .gpu/. Each part runs `gpu_check.sh --dry-run`
# with only its own pack: core with spconv and no ROS, node with ROS and no spconv, as the two
# uploads carry them. Catches what the CPU venv cannot: a module the device lacks, an API that
# torch 2.11 has not, a test file that fails to collect. First run: a ~5 GB download into $VENV.
# `suite` runs the whole CPU test suite in that software instead (both packs and rosbags' wheels;
# test_package aside: colcon is not on the device), about as long as `make test`.
#     bash scripts/gpu_prepare.sh && bash scripts/gpu_rehearse.sh [core|node|all|suite]
set -uo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
VENV=${DEVICE_VENV:-/tmp/sonata-device-venv}
PART=${1:-all}
# what the device image has and this project or spconv's import needs (versions as the image lists them)
DEVICE_PACKAGES=('torch==2.11.*' 'numpy==2.5.*' scipy PyYAML matplotlib pillow psutil pytest pytest-timeout
    pybind11 ninja portalocker)

source scripts/python312.sh
if [ ! -x "$VENV/bin/python3" ]; then
    python312 -m venv "$VENV" || exit 2
    "$VENV/bin/python3" -m pip install -q "${DEVICE_PACKAGES[@]}" 2>&1 | grep -v "WARNING: Location"
fi
status=0
device_python() {  # the device's Python first, nothing of this machine's paths
    unset PYTHONPATH LD_LIBRARY_PATH
    export PATH=$VENV/bin:$PATH
}
rehearse() {  # part: a clean environment with only that part's pack, then the dry run
    local part=$1
    (
        device_python
        export OUT=$(mktemp -d)
        if [ "$part" = core ]; then
            rm -rf /tmp/site && source .gpu/setup.sh
        else
            source .gpu/ros_setup.sh
        fi || exit 1
        bash scripts/gpu_check.sh --dry-run --part "$part"
    ) || status=1
}
suite() {
    (
        device_python
        rm -rf /tmp/site && source .gpu/setup.sh && source .gpu/ros_setup.sh || exit 1
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/bag-wheels/*.whl || exit 1
        python3 -m pytest -q -p no:cacheprovider test --deselect test/test_package.py
    ) || status=1
}
case "$PART" in
    core | node) rehearse "$PART" ;;
    all) rehearse core; rehearse node ;;
    suite) suite ;;
    *) echo "usage: $0 [core|node|all|suite]" >&2; exit 2 ;;
esac
exit $status
