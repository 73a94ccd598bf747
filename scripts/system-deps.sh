# Debian packages the build and the tests need (sourced by the other scripts): the model crates
# need pkg-config and ALSA (cpal); the API server check curl; the desktop app WebKitGTK and friends; its tests Xvfb,
# WebKitWebDriver, Chromium and ImageMagick (screenshots).
SYSTEM_PACKAGES=(pkg-config build-essential file curl libssl-dev libasound2-dev libdbus-1-dev
  libwebkit2gtk-4.1-dev libgtk-3-dev libsoup-3.0-dev librsvg2-dev libxdo-dev
  xvfb xauth webkit2gtk-driver chromium imagemagick)

install_system_deps() {
    local missing=()
    for p in "${SYSTEM_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        local sudo=""
        [[ $(id -u) -ne 0 ]] && sudo="sudo"
        $sudo apt-get update
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}
