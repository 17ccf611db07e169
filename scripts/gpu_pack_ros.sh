#!/usr/bin/env bash
# Packs the ROS 2 (Kilted) client libraries for Python 3.12 into .gpu/ros-site.tar.xz, so that the
# node can run on the CUDA machine (Python 3.12, no registry access). Only what rclpy needs at run
# time travels: the lint / code-generator wheels are left out and shared libraries are stripped
# (~20 MB; the wheels' .data/ folders stay where they unpack: the setup script puts every folder
# holding a shared library on LD_LIBRARY_PATH, as the wheels' own bootstrapper does).
# Untested on the device until a session with a GPU runs it. In the project root, after
# `bash ../shared/gpu/pack.sh`:
#     bash scripts/gpu_pack_ros.sh
# and on the device, after `source .gpu/setup.sh`:  source .gpu/ros_setup.sh
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
venv=${VENV:-.venv}
mkdir -p .gpu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
skip='ament-cmake|rosidl-generator|rosidl-adapter|rosidl-cli|rosidl-cmake|rosidl-pycommon|rosidl-parser|rmw-implementation-cmake|wheels-bootstrapper'
mapfile -t packages < <("$venv/bin/pip" freeze 2>/dev/null | grep -iE '^ros-' | grep -viE "$skip")
platforms=()
for p in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_17 manylinux2014; do
  platforms+=(--platform "${p}_x86_64")
done
python3 -m pip download -q --no-deps --python-version 3.12 --implementation cp "${platforms[@]}" --platform any \
  -d "$work/wheels" "${packages[@]}" 2>&1 | grep -v "WARNING: Location" || true
mkdir -p "$work/site"
for wheel in "$work"/wheels/*.whl; do (cd "$work/site" && unzip -q -o "$wheel"); done
find "$work/site" -name '*.so*' -exec strip --strip-unneeded {} + 2>/dev/null || true
tar -C "$work/site" -cf - . | xz -T0 -6 > .gpu/ros-site.tar.xz
cat > .gpu/ros_setup.sh <<'SETUP'
# source this after .gpu/setup.sh on the CUDA machine: rclpy & co. for Python 3.12
mkdir -p /tmp/ros-site && tar -C /tmp/ros-site -xJf .gpu/ros-site.tar.xz && \
export PYTHONPATH=/tmp/ros-site${PYTHONPATH:+:$PYTHONPATH} && \
export LD_LIBRARY_PATH=$(find /tmp/ros-site -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
SETUP
du -sh .gpu/ros-site.tar.xz
