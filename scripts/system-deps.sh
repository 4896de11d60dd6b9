#!/usr/bin/env bash
# Ensure the Debian packages the project needs: FFmpeg (torchaudio/torchcodec decoding),
# libfluidsynth3 (the GMNotes renderer), the two independent General MIDI SoundFonts and
# Chromium (the headless browser the MLflow UI test in tests/ui drives through Playwright).
# Installs only what is missing; a second run installs nothing.
set -euo pipefail

PACKAGES=(ffmpeg libfluidsynth3 fluid-soundfont-gm timgm6mb-soundfont chromium)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing system packages: ${missing[*]}, and this is not a Debian/Ubuntu system." >&2
    echo "Install FFmpeg, libfluidsynth 2.x, the FluidR3_GM / TimGM6mb SoundFonts and Chromium with your package manager." >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "error: missing system packages: ${missing[*]}" >&2
    echo "They need root to install. Ask an administrator to run:" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
