#!/bin/sh
# Installs d8 from this folder.
#   As root:  binaries in /usr/local/bin (man pages beside, in
#             /usr/local/share/man), the systemd units, a `d8` system
#             user owning /var/lib/d8, /etc/d8/worker.env (mode 0600, for
#             the worker's settings and keys). Nothing is started.
#   As a user: the binaries in ~/.local/bin, the man pages in
#             ~/.local/share/man and the desktop app's menu entry.
#   ./install.sh --uninstall removes what it installed (root: also the user,
#   /var/lib/d8 and /etc/d8).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" -ne 0 ]; then
    data=${XDG_DATA_HOME:-$HOME/.local/share}
    bindir=$HOME/.local/bin apps=$data/applications man1=$data/man/man1
    if [ "${1:-}" = --uninstall ]; then
        rm -f "$bindir/d8" "$bindir/d8-desktop" "$apps/d8-desktop.desktop"
        for page in "$here"/man/*.1; do rm -f "$man1/$(basename "$page")"; done
        echo "d8 removed from $bindir"; exit 0
    fi
    mkdir -p "$bindir" "$apps" "$man1"
    install -m 0755 "$here/d8" "$here/d8-desktop" "$bindir/"
    install -m 0644 "$here"/man/*.1 "$man1/"
    sed "s#^Exec=d8-desktop#Exec=$bindir/d8-desktop#" "$here/d8-desktop.desktop" > "$apps/d8-desktop.desktop"
    echo "d8 installed in $bindir (run d8-desktop, or d8 join / d8 serve)."
    echo "For services at boot, run this script as root."
    exit 0
fi
if [ "${1:-}" = --uninstall ]; then
    systemctl disable --now d8-orchestrator d8-worker >/dev/null 2>&1 || true
    rm -f /usr/local/bin/d8 /usr/local/bin/d8-desktop /etc/systemd/system/d8-orchestrator.service \
        /etc/systemd/system/d8-worker.service /usr/local/share/applications/d8-desktop.desktop
    for page in "$here"/man/*.1; do rm -f "/usr/local/share/man/man1/$(basename "$page")"; done
    rm -rf /var/lib/d8 /etc/d8
    userdel d8 >/dev/null 2>&1 || true
    systemctl daemon-reload >/dev/null 2>&1 || true
    echo "d8 removed"; exit 0
fi
install -m 0755 "$here/d8" "$here/d8-desktop" /usr/local/bin/
install -d /usr/local/share/man/man1
install -m 0644 "$here"/man/*.1 /usr/local/share/man/man1/
install -m 0644 "$here/d8-orchestrator.service" "$here/d8-worker.service" /etc/systemd/system/
install -d /usr/local/share/applications
sed "s#^Exec=d8-desktop#Exec=/usr/local/bin/d8-desktop#" "$here/d8-desktop.desktop" > /usr/local/share/applications/d8-desktop.desktop
getent passwd d8 >/dev/null || useradd --system --home-dir /var/lib/d8 --shell /usr/sbin/nologin --user-group d8
install -d -o d8 -g d8 -m 0750 /var/lib/d8
install -d -m 0755 /etc/d8
[ -e /etc/d8/worker.env ] || install -m 0600 "$here/worker.env" /etc/d8/worker.env
systemctl daemon-reload >/dev/null 2>&1 || true
cat <<'HINT'
d8 is installed; nothing was started.
  Orchestrator on this machine:  systemctl enable --now d8-orchestrator
  Worker on this machine:        edit /etc/d8/worker.env, then systemctl enable --now d8-worker
  Or have d8 set up either, keys taken from its environment:
                                 GROQ_API_KEY=... D8_PROVIDERS=groq D8_TOKEN=... d8 service install
  Desktop app:                   d8-desktop
HINT
