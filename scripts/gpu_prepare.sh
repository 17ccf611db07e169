#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for the accelerator machine (Python 3.12, torch with CUDA, no registry
# access, at most 64 MiB uploaded per call with the working tree), in two parts that each fit:
#   core: spconv for CUDA 12.6+ (../shared/gpu/pack.sh) with what its import needs, and the public
#         reference for vs_reference: $SONATA_REFERENCE_ENV (default /tmp/sonata-ref), built there from
#         a git copy of facebookresearch/sonata ($SONATA_REFERENCE_GIT) when absent
#         (benchmarks/reference_env/README.md);
#   node: the ROS 2 client libraries for Python 3.12, installed into a prefix.
# In the project root:
#     bash scripts/gpu_prepare.sh        # prints the carry list of each part and its upload size
# On the device (carry the part's paths):
#     core: source .gpu/setup.sh && bash scripts/gpu_check.sh --part core [--quick]
#     node: bash scripts/gpu_check.sh --part node [--quick]      (it sources .gpu/ros_setup.sh)
# `bash scripts/gpu_rehearse.sh` runs both parts' dry runs on this CPU in the device's Python.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
reference=${SONATA_REFERENCE_ENV:-/tmp/sonata-ref}
limit_mib=64

source scripts/python312.sh  # python312: installs the ROS wheels into a prefix
python312 -V > /dev/null || exit 2
platforms=()
for p in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_17 manylinux2014; do
    platforms+=(--platform "${p}_x86_64")
done
download() {  # folder requirement...: cp312 wheels, no dependencies
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" --platform any -d "$@" 2>&1 | grep -v "WARNING: Location" || true
}

# core: spconv and its build helpers. pccm (imported by spconv) needs lark, which the shared pack
# lacks; rosbags and its compressors stay behind (no GPU check reads a bag), so that the part fits.
[ -f .gpu/spconv-site.tar.xz ] || bash ../shared/gpu/pack.sh
download .gpu/wheels lark==1.3.1
mkdir -p .gpu/bag-wheels
for wheel in rosbags ruamel lz4 zstandard backports apsw; do
    mv .gpu/wheels/"$wheel"*.whl .gpu/bag-wheels/ 2> /dev/null || true
done
reference_git=${SONATA_REFERENCE_GIT:-/work/.mirror/facebookresearch+sonata/repo}
if [ ! -d "$reference/src" ] && [ -d "$reference_git" ]; then  # build it (benchmarks/reference_env/README.md)
    mkdir -p "$reference/src"
    git --git-dir="$reference_git" archive HEAD | tar -x -C "$reference/src"
    python3 -m pip install -q --target "$reference/deps" addict==2.4.0 2>&1 | grep -v "WARNING" || true
fi
if [ -d "$reference/src" ]; then
    rm -rf .gpu/sonata-ref && cp -r "$reference" .gpu/sonata-ref
else
    echo "gpu_prepare: no reference environment at $reference: vs_reference will be skipped on the device" >&2
fi

# node: every ROS wheel the venv has but the lint plugins and the re-exec bootstrapper, installed into a
# prefix by Python 3.12 (a wheel's .data/ scheme puts message modules and shared libraries where an
# unzipped wheel would not), then stripped of headers, static and CMake files.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
skip='ament-cmake-(cppcheck|cpplint|flake8|pep257|uncrustify)|wheels-bootstrapper'
mapfile -t packages < <(.venv/bin/python -m pip freeze 2> /dev/null | grep -iE '^ros-' | grep -viE "$skip")
if [ "${#packages[@]}" -lt 10 ]; then  # the ROS wheels to pack are the ones the project's venv holds
    echo "gpu_prepare: no ROS wheels in .venv: run 'make venv' first" >&2
    exit 2
fi
download "$work/wheels" "${packages[@]}" lark==1.3.1
python312 -m pip install -q --no-deps --no-index --no-compile --prefix "$work/prefix" "$work"/wheels/*.whl 2>&1 \
    | grep -v "WARNING" || true
rm -rf "$work/prefix"/{include,lib64,tools,bin,lib/cmake}
find "$work/prefix" \( -name cmake -o -name __pycache__ \) -type d -prune -exec rm -rf {} +
find "$work/prefix" \( -name '*.a' -o -name '*.c' -o -name '*.h' -o -name '*.hpp' \) -delete
find "$work/prefix" -name '*.so*' -type f -exec strip --strip-unneeded {} + 2> /dev/null || true
tar -C "$work/prefix" -cf - . | xz -T0 -6 > .gpu/ros-prefix.tar.xz
rm -f .gpu/ros-site.tar.xz  # the unzipped-wheel layout of earlier sessions (message modules missing)
cat > .gpu/ros_setup.sh << 'SETUP'
# source this on the device (Python 3.12): rclpy & co. from the prefix that scripts/gpu_prepare.sh packed
if python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    mkdir -p /tmp/ros-prefix && tar -C /tmp/ros-prefix -xJf .gpu/ros-prefix.tar.xz && \
    export PYTHONPATH=/tmp/ros-prefix/lib/python3.12/site-packages${PYTHONPATH:+:$PYTHONPATH} && \
    export LD_LIBRARY_PATH=/tmp/ros-prefix/lib:$(ls -d /tmp/ros-prefix/lib/python3.12/site-packages/ros_*.libs | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
else
    echo "ros_setup: python3 is not 3.12, the packed ROS libraries are for 3.12: not used" >&2
fi
SETUP

tree_bytes=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 cat 2> /dev/null | wc -c)
part() {  # name path...: the carry list and the upload it makes with the tree
    local name=$1
    shift
    local bytes
    bytes=$(($(du -cb "$@" | tail -1 | cut -f1) + tree_bytes))
    local mib=$((bytes >> 20))
    local verdict="fits"
    [ "$mib" -lt "$limit_mib" ] || verdict="TOO LARGE (limit $limit_mib MiB)"
    printf '%s: carry %s  (%d MiB with the tree: %s)\n' "$name" "$(printf '"%s" ' "$@")" "$mib" "$verdict"
    [ "$mib" -lt "$limit_mib" ]
}
core=(.gpu/setup.sh .gpu/spconv-site.tar.xz .gpu/wheels)
[ -d .gpu/sonata-ref ] && core+=(.gpu/sonata-ref)
fits=0
part core "${core[@]}" || fits=1
part node .gpu/ros-prefix.tar.xz .gpu/ros_setup.sh || fits=1
exit $fits
