#!/usr/bin/env bash
# Installs the Debian packages that hold the built-in data (and tcmalloc, which keeps the
# memory of long CPU jobs flat: src/multigrain/runtime/allocator.py), when they are missing.
# Needs root (or sudo); prints the command to run by hand otherwise.
# --corpus also installs the photo packages that only training the shipped model reads
# (src/multigrain/data/photos/extra.py; about 650 MB).
set -euo pipefail
packages=(dataset-fashion-mnist opencv-doc tuxpaint-stamps-default gcompris-qt-data libjxl-testdata chromium
          libtcmalloc-minimal4
          # the shipped model's held-out packages (validation: mate; test: lomiri) and ukui
          mate-backgrounds lomiri-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04
          ukui-wallpapers)
if [ "${1:-}" = "--corpus" ]; then
  packages+=(plasma-workspace-wallpapers gnome-backgrounds stellarium-data kstars-data)
fi
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
  echo "multigrain: the built-in data needs Debian packages: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
