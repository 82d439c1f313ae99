#!/usr/bin/env bash
# Cross-platform proof by running what was built (called by .ci/run):
#   arm64    d8 built for aarch64 serves under qemu-aarch64; a native worker
#            joins it and completes tasks.
#   Windows  d8's unit tests, d8.exe --version and doctor under Wine, and
#            d8.exe join against a native orchestrator as far as Wine's
#            socket layer goes (see below); the MSI's tables.
#   Debian   the amd64 .deb installed, its units verified, d8 --version
#            run, then purged leaving nothing behind; lintian. The same for
#            the tarball's install.sh and --uninstall.
#   macOS    the bundle's plist parsed.
# The smoke binaries use the dev profile without debug info, in their own
# target dir (target/cross), to stay quick; installer/build.sh makes the
# release artifacts. Needs root for apt-get and dpkg. Network traffic stays
# on loopback.
set -euo pipefail
# (In pipelines, `grep PATTERN >/dev/null`, not `grep -q`: -q stops reading
# at the first match and the writer's SIGPIPE fails the pipeline.)
cd "$(dirname "$0")/.."
root=$(pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
export CARGO_TARGET_DIR=$root/target/cross CARGO_PROFILE_DEV_DEBUG=0
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n== smoke: %s\n' "$*"; }
fail() { echo "SMOKE FAILED: $*" >&2; exit 1; }
# The native binaries the tests built (built here with the tests' own
# settings when missing, so nothing of theirs is rebuilt).
native=$root/target/debug/d8
desktop=$root/target/debug/d8-desktop
if [ ! -x "$native" ] || [ ! -x "$desktop" ]; then
  (unset CARGO_TARGET_DIR CARGO_PROFILE_DEV_DEBUG; cargo build --locked -p d8 -p d8-desktop --bins)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_health() { # URL LOG SECONDS
  for _ in $(seq $(( $3 * 10 ))); do
    curl -fs "$1/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  cat "$2" >&2; fail "no answer from $1"
}
submit_and_wait() { # URL KEY COUNT
  local ids=() id
  for i in $(seq "$3"); do
    id=$(curl -fs -H "Authorization: Bearer $2" -d '{"type":"agent_action","data":{"messages":[{"role":"user","content":"smoke '"$i"'"}]}}' "$1/api/tasks" | python3 -c 'import json,sys; print(json.load(sys.stdin)["task_id"])')
    ids+=("$id")
  done
  for id in "${ids[@]}"; do
    for _ in $(seq 300); do
      st=$(curl -fs -H "Authorization: Bearer $2" "$1/api/tasks/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
      [ "$st" = completed ] && break
      sleep 0.1
    done
    [ "$st" = completed ] || fail "task $id is $st"
  done
}

# --- arm64 ------------------------------------------------------------------
say "arm64: d8 serve under qemu-aarch64, a native worker"
t0=$(date +%s)
cargo build --locked --target aarch64-unknown-linux-gnu -p d8 --bin d8
arm=$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/debug/d8
file "$arm" | grep 'ARM aarch64' >/dev/null || fail "$arm is not an arm64 binary"
echo "   built in $(( $(date +%s) - t0 )) s"
qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu)
"${qemu[@]}" "$arm" --version
port=$(free_port)
"${qemu[@]}" "$arm" serve --no-mdns --bind 127.0.0.1 --port "$port" --data-dir "$work/arm-orch" \
  > "$work/arm-serve.log" 2>&1 &
pids+=($!)
wait_health "http://127.0.0.1:$port" "$work/arm-serve.log" 60
curl -fs "http://127.0.0.1:$port/health" | grep '"status":"ok"' >/dev/null || fail "arm64 orchestrator unhealthy"
"$native" join "127.0.0.1:$port" --token "$(cat "$work/arm-orch/join-token")" --provider echo \
  --data-dir "$work/arm-worker" > "$work/arm-worker.log" 2>&1 &
pids+=($!)
submit_and_wait "http://127.0.0.1:$port" "$(cat "$work/arm-orch/api-key")" 5
echo "   5 tasks completed by a native worker on the emulated arm64 orchestrator"

# --- Windows ------------------------------------------------------------------
say "Windows: unit tests and d8.exe under Wine"
t0=$(date +%s)
cargo build --locked --target x86_64-pc-windows-gnu -p d8 -p d8-desktop --bins
cargo test --locked --target x86_64-pc-windows-gnu -p d8 --lib --no-run 2> "$work/wintest-build.log" \
  || { cat "$work/wintest-build.log" >&2; fail "building the Windows unit tests"; }
tests_exe=$(sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))$/\1/p' "$work/wintest-build.log" | tail -1)
win=$CARGO_TARGET_DIR/x86_64-pc-windows-gnu/debug
echo "   built in $(( $(date +%s) - t0 )) s"
# Wine runs in a network namespace with only loopback: nothing it does
# (d8.exe doctor's mDNS, say) reaches a real network.
ns=d8smoke-$$
ip netns add "$ns"
cleanup_ns() {
  disown -a 2>/dev/null || true
  # Wine's processes first (wineserver -k waits for them), so that the
  # prefix can be removed; then whatever else ran in the namespace.
  ip netns exec "$ns" env WINEPREFIX="$work/wine" "$(command -v wineserver || echo /usr/lib/wine/wineserver64)" -k 2>/dev/null || true
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
}
trap 'cleanup_ns; cleanup' EXIT
ip netns exec "$ns" ip link set lo up
export WINEPREFIX=$work/wine WINEDEBUG=-all
# The prefix's user is "José Müller" (Wine names the profile after $USER):
# %USERPROFILE%, %APPDATA% and %LOCALAPPDATA% have a space and accents.
winuser='José Müller'
wine64=$(command -v wine64 || echo /usr/lib/wine/wine64)
wine() { ip netns exec "$ns" env WINEPREFIX="$WINEPREFIX" WINEDEBUG=-all USER="$winuser" LOGNAME="$winuser" "$wine64" "$@"; }
# Ends the prefix's session (its services, its desktop process) and waits
# until its server is gone: `wineserver -k` only asks it to stop, and a
# wine started while the old server still shut down once failed to spawn
# icacls (ERROR_INTERNAL_ERROR, 1359).
wine_session_end() {
  local ws; ws=$(command -v wineserver || echo /usr/lib/wine/wineserver64)
  ip netns exec "$ns" env WINEPREFIX="$WINEPREFIX" "$ws" -k || true
  ip netns exec "$ns" env WINEPREFIX="$WINEPREFIX" "$ws" -w || true
}
wine wineboot -i > /dev/null 2>&1
x86_64-w64-mingw32-gcc -shared -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
  installer/windows/test/bcryptprimitives.c -ladvapi32
wine "$tests_exe" > "$work/wintests.log" 2>&1 || { tail -40 "$work/wintests.log" >&2; fail "Windows unit tests under Wine"; }
grep -a 'test result:' "$work/wintests.log" | sed 's/^/   unit tests: /'
[ "$(wine "$win/d8.exe" --version | tr -d '\r')" = "d8 $version" ] || fail "d8.exe --version"
wine "$win/d8.exe" doctor > "$work/win-doctor.log" 2>&1 || true
grep -aq 'Verdict:' "$work/win-doctor.log" || { cat "$work/win-doctor.log" >&2; fail "d8.exe doctor gave no verdict"; }
echo "   d8.exe --version and d8.exe doctor ran"
# From a folder with spaces and non-ASCII letters, in the user's profile
# (the join attempt below writes its lock and status file in the default
# data dir, under %APPDATA%).
odd='C:\users\José Müller\Programs\d8 app'
odd_unix="$WINEPREFIX/drive_c/users/José Müller/Programs/d8 app"
mkdir -p "$odd_unix"
cp "$win/d8.exe" "$odd_unix/d8.exe"
[ "$(wine "$odd\d8.exe" --version | tr -d '\r')" = "d8 $version" ] || fail "d8.exe from a path with spaces and accents"
wine "$odd\d8.exe" join --check-keys=json --provider echo --data-dir "$odd\data" | grep -a '"result":"ok"' >/dev/null \
  || fail "d8.exe --check-keys from a path with spaces and accents"
echo "   d8.exe ran from \"$odd\""
# The desktop app from the same folder: its window opens under Xvfb (Wine's
# OpenGL on Mesa), and --background says why it cannot start a worker yet.
cp "$win/d8-desktop.exe" "$odd_unix/d8-desktop.exe"
n=150; while [ -e "/tmp/.X11-unix/X$n" ] || [ -e "/tmp/.X$n-lock" ]; do n=$((n + 1)); done
Xvfb ":$n" -screen 0 1280x800x24 -nolisten tcp > "$work/xvfb.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -e "/tmp/.X11-unix/X$n" ] && break; sleep 0.1; done
# Wine's desktop process takes its display when the prefix's session
# starts: end the session the commands above started without one.
wine_session_end
ip netns exec "$ns" env DISPLAY=":$n" WINEPREFIX="$WINEPREFIX" WINEDEBUG=-all USER="$winuser" LOGNAME="$winuser" "$wine64" \
  "$odd\d8-desktop.exe" > "$work/win-gui.log" 2>&1 &
gui_pid=$!
shown=
for _ in $(seq 600); do
  if DISPLAY=":$n" xdotool search --name '^d8$' >/dev/null 2>&1; then shown=yes; break; fi
  sleep 0.1
done
kill "$gui_pid" 2>/dev/null || true
[ -n "$shown" ] || { cat "$work/win-gui.log" >&2; fail "d8-desktop.exe showed no window from \"$odd\""; }
wine "$odd\d8-desktop.exe" --background > "$work/win-bg.log" 2>&1 && fail "d8-desktop.exe --background started with nothing set up"
grep -a 'has not joined a cluster yet' "$work/win-bg.log" >/dev/null || { cat "$work/win-bg.log" >&2; fail "d8-desktop.exe --background"; }
echo "   d8-desktop.exe opened its window from there; --background said why it cannot start yet"
# A native orchestrator beside it; d8.exe reaches its HTTP API (TCP).
port=$(free_port)
ip netns exec "$ns" "$native" serve --no-mdns --bind 127.0.0.1 --port "$port" --data-dir "$work/win-orch" \
  > "$work/win-orch.log" 2>&1 &
for _ in $(seq 100); do [ -s "$work/win-orch/api-key" ] && break; sleep 0.1; done
sleep 0.5
D8_API_KEY=$(cat "$work/win-orch/api-key") wine "$win/d8.exe" status --url "http://127.0.0.1:$port" \
  > "$work/win-status.log" 2>&1 || { cat "$work/win-status.log" >&2; fail "d8.exe status"; }
grep -aq 'state: ok' "$work/win-status.log" || fail "d8.exe status did not read the orchestrator"
wine "$win/d8.exe" join --check-keys=json --provider echo | grep -a '"result":"ok"' >/dev/null || fail "d8.exe --check-keys"
echo "   d8.exe status read a native orchestrator over HTTP; d8.exe join --check-keys ran the provider code"
# Joining goes over QUIC; Wine 8 refuses socket options quinn-udp needs
# (real Windows has them), so the worker stops at its UDP socket. Checked
# so that the day it gets further, this script says so.
set +e
D8_TOKEN=$(cat "$work/win-orch/join-token") timeout 60 \
  ip netns exec "$ns" env WINEPREFIX="$WINEPREFIX" WINEDEBUG=-all USER="$winuser" LOGNAME="$winuser" "$wine64" \
  "$win/d8.exe" join "127.0.0.1:$port" --provider echo > "$work/win-join.log" 2>&1
join_rc=$?
set -e
if grep -aq 'cannot bind UDP .*10045' "$work/win-join.log" \
  && grep -q '"state":"failed"' "$WINEPREFIX/drive_c/users/$winuser/AppData/Roaming/d8/worker/status.json"; then
  echo "   d8.exe join: not verified under Wine: stops at its UDP socket (WSAEOPNOTSUPP from Wine 8), exit $join_rc,"
  echo "   its status file (state failed, the reason) written in its default data dir, %APPDATA%\\d8\\worker"
else
  cat "$work/win-join.log" >&2
  fail "d8.exe join under Wine ended differently than known (exit $join_rc): update this script"
fi
say "Windows: d8.exe service install|status|uninstall (Wine's service manager)"
# A real service: the SCM starts `d8.exe service run`, which must answer
# its dispatcher. Settings go to the env file in %ProgramData%\d8, never to
# the service's command line (checked with a made-up key). The worker it
# runs stops at the UDP socket as above; its status file says so.
# Wine 8 holds its service database locked after the prefix's first boot
# (ERROR_SERVICE_DATABASE_LOCKED until its services restart): restart them.
wine_session_end
fake_key=gsk_smoke_not_a_key_$$
D8_PROVIDERS=echo GROQ_API_KEY=$fake_key ORCHESTRATOR_URL=127.0.0.1:$port D8_TOKEN=$(cat "$work/win-orch/join-token") \
  wine "$odd\d8.exe" service install --worker > "$work/win-svc.log" 2>&1 || { cat "$work/win-svc.log" >&2; fail "d8.exe service install"; }
grep -a 'service d8-worker: started' "$work/win-svc.log" >/dev/null || { cat "$work/win-svc.log" >&2; fail "service not started"; }
wine reg query 'HKLM\System\CurrentControlSet\Services\d8-worker' /v ImagePath | tr -d '\r' > "$work/win-imagepath"
# Run from the user's folder, the service's executable is copied where
# only administrators write (it runs as LocalSystem).
grep -aF 'C:\Program Files\d8\d8.exe' "$work/win-imagepath" | grep -aF 'service run --worker --system --dir' >/dev/null \
  || { cat "$work/win-imagepath" >&2; fail "the service's command line"; }
! grep -aF "$fake_key" "$work/win-imagepath" || fail "a key is in the service's command line"
svc_dir="$WINEPREFIX/drive_c/ProgramData/d8"
grep "^GROQ_API_KEY=$fake_key\$" "$svc_dir/worker.env" >/dev/null || fail "the key is not in the service's env file"
for _ in $(seq 300); do grep -a '"state":"failed"' "$svc_dir/worker/status.json" >/dev/null 2>&1 && break; sleep 0.1; done
grep -a 'cannot bind UDP .*10045' "$svc_dir/worker/status.json" >/dev/null \
  || { cat "$svc_dir/worker/status.json" "$svc_dir/worker/service.log" >&2; fail "the service's worker ended differently than known"; }
grep -a 'provider ready' "$svc_dir/worker/service.log" >/dev/null || fail "no service log"
# Restart after a failure: the SCM accepted the failure actions (install
# says when it does not). Wine's SCM does not act on them, so the restart
# itself is not observed here.
! grep -a 'restart on failure not set' "$work/win-svc.log" || fail "failure actions refused"
set +e; wine "$odd\d8.exe" service status --worker > "$work/win-svc-status.log" 2>&1; st=$?; set -e
grep -a 'worker    failed' "$work/win-svc-status.log" >/dev/null || { cat "$work/win-svc-status.log" >&2; fail "d8.exe service status"; }
# An enrolled worker (its identity made by a native worker: the files are
# the same on every OS) does not stop at the socket error: it keeps
# retrying, so the service stays running, and the SCM's Stop must end it
# cleanly (the drain path: status file "stopped", not "failed").
wine "$odd\d8.exe" service uninstall --worker > /dev/null || fail "d8.exe service uninstall"
D8_TOKEN=$(cat "$work/win-orch/join-token") ip netns exec "$ns" "$native" join "127.0.0.1:$port" --provider echo \
  --data-dir "$work/enrolled" > "$work/enrolled.log" 2>&1 &
enrolled_pid=$!
for _ in $(seq 100); do grep -a '"state":"connected"' "$work/enrolled/status.json" >/dev/null 2>&1 && break; sleep 0.1; done
kill -INT "$enrolled_pid"; wait "$enrolled_pid" || true
rm -rf "$svc_dir/worker"; mkdir -p "$svc_dir/worker"
cp "$work/enrolled/"{ca.crt,worker-id,worker.crt,worker.key} "$svc_dir/worker/"
wine "$odd\d8.exe" service install --worker > /dev/null || fail "d8.exe service install (enrolled)"
for _ in $(seq 300); do grep -a '"state":"connecting"' "$svc_dir/worker/status.json" >/dev/null 2>&1 && break; sleep 0.1; done
wine "$odd\d8.exe" service status --worker > "$work/win-svc-status.log" 2>&1 \
  || { cat "$work/win-svc-status.log" >&2; fail "d8.exe service status: the enrolled worker's service is not running"; }
grep -a 'starts at boot, running' "$work/win-svc-status.log" >/dev/null || fail "service status words"
wine "$odd\d8.exe" service uninstall --worker > "$work/win-svc-stop.log" || fail "d8.exe service uninstall (running)"
grep -a 'service d8-worker: stopped' "$work/win-svc-stop.log" >/dev/null || fail "the running service was not stopped"
grep -a '"state":"stopped"' "$svc_dir/worker/status.json" >/dev/null \
  || { cat "$svc_dir/worker/status.json" >&2; fail "the service's worker did not stop cleanly on the SCM's Stop"; }
set +e; wine "$odd\d8.exe" service status --worker > /dev/null 2>&1; gone=$?; set -e
[ "$gone" = 4 ] || fail "d8.exe service status after uninstall: exit $gone, not 4"
[ ! -e "$WINEPREFIX/drive_c/Program Files/d8/d8.exe" ] || fail "the service's copy of d8.exe left behind"
echo "   copied to Program Files, registered with the SCM, started by it as a service (dispatcher answered, env file read, log written,"
echo "   restart on failure accepted by the SCM), status read (exit $st), removed; the key only in the env file; an enrolled"
echo "   worker's service ran (exit 0 from status) and stopped cleanly on the SCM's Stop"
say "Windows: the MSI's tables"
mkdir -p "$work/msibin"
x86_64-w64-mingw32-strip -o "$work/msibin/d8.exe" "$win/d8.exe"
x86_64-w64-mingw32-strip -o "$work/msibin/d8-desktop.exe" "$win/d8-desktop.exe"
msi=$(installer/windows/build-msi.sh "$version" "$work/msibin" "$work" 2>/dev/null)
msiinfo export "$msi" File | grep $'\td8.exe\t' >/dev/null || fail "MSI: no d8.exe"
msiinfo export "$msi" File | grep $'\td8-desktop.exe\t' >/dev/null || fail "MSI: no d8-desktop.exe"
msiinfo export "$msi" Shortcut | grep '\[INSTALLDIR\]d8-desktop.exe' >/dev/null || fail "MSI: no Start-menu shortcut"
msiinfo export "$msi" Directory | grep $'^UserPrograms\tLocalAppDataFolder\tPrograms' >/dev/null || fail "MSI: not in the user's programs folder"
msiinfo export "$msi" Property | grep $'^MSIINSTALLPERUSER\t1' >/dev/null || fail "MSI: not per user"
msiinfo suminfo "$msi" | grep '^Source: 10 ' >/dev/null || fail "MSI: asks for elevation"
echo "   files, Start-menu shortcut, per-user install without elevation"
# And Windows Installer itself (Wine's msiexec; the package asks for no
# elevation): installed, the installed d8.exe run, removed.
msi_win="Z:${msi//\//\\}"
me=$winuser
inst="$WINEPREFIX/drive_c/users/$me/AppData/Local/Programs/d8"
lnk="$WINEPREFIX/drive_c/users/$me/AppData/Roaming/Microsoft/Windows/Start Menu/Programs/d8.lnk"
wine msiexec /i "$msi_win" /qn || fail "msiexec /i"
[ -f "$inst/d8.exe" ] && [ -f "$inst/d8-desktop.exe" ] || fail "the MSI did not put d8 in $inst"
[ -f "$lnk" ] || fail "the MSI made no Start-menu shortcut"
[ "$(wine "C:\\users\\$me\\AppData\\Local\\Programs\\d8\\d8.exe" --version | tr -d '\r')" = "d8 $version" ] \
  || fail "the installed d8.exe"
# The README's command for the worker service, as typed at a prompt: the
# line is taken from the README (a key made up in place of its "…") and
# run by cmd from a batch file, so cmd's own quoting and %LOCALAPPDATA%
# apply to the MSI's d8.exe. The key must reach the env file exactly.
readme_cmd=$(grep -o 'set "GROQ_API_KEY=…" & [^`]*service install' README.md | head -1)
[ -n "$readme_cmd" ] || fail "the README's Windows service command was not found"
readme_key=gsk_readme_$$
printf '@%s\r\n' "${readme_cmd/…/$readme_key}" > "$WINEPREFIX/drive_c/users/$me/readme.bat"
wine cmd /c "C:\\users\\$me\\readme.bat" > "$work/win-readme.log" 2>&1 \
  || { cat "$work/win-readme.log" >&2; fail "the README's Windows service command"; }
grep -a 'service d8-worker: started' "$work/win-readme.log" >/dev/null || { cat "$work/win-readme.log" >&2; fail "README command: no service"; }
grep -q "^GROQ_API_KEY=$readme_key\$" "$svc_dir/worker.env" && grep -q '^D8_PROVIDERS=groq$' "$svc_dir/worker.env" \
  || { grep -v KEY "$svc_dir/worker.env" >&2; fail "README command: the settings did not reach the env file exactly"; }
wine "$odd\d8.exe" service uninstall --worker > /dev/null || fail "d8.exe service uninstall (README command)"
wine msiexec /x "$msi_win" /qn || fail "msiexec /x"
[ ! -e "$inst/d8.exe" ] && [ ! -e "$lnk" ] || fail "msiexec /x left d8 behind"
echo "   installed by msiexec into the user's Programs folder with its shortcut, run, the README's service command"
echo "   run by cmd from there, uninstalled clean"

# --- Debian package -----------------------------------------------------------
say "Debian: the amd64 .deb installed, verified, purged"
# It installs and removes d8 system-wide: never over an installed d8.
for there in /usr/bin/d8 /usr/local/bin/d8 /etc/d8 /var/lib/d8; do
  [ ! -e "$there" ] || fail "$there exists: this machine has d8 installed; the package checks install and remove it (run them on a clean machine, as CI does)"
done
! getent passwd d8 >/dev/null || fail "a d8 user exists already (see above)"
mkdir -p "$work/debbin"
strip -o "$work/debbin/d8" "$native"
strip -o "$work/debbin/d8-desktop" "$desktop"
deb=$(installer/deb/build-deb.sh "$version" amd64 "$work/debbin" "$work")
lintian --fail-on error --suppress-tags-from-file installer/deb/lintian-suppressed "$deb" > "$work/lintian.log" 2>&1 \
  || { cat "$work/lintian.log" >&2; fail "lintian errors"; }
! grep no-manual-page "$work/lintian.log" >&2 || fail "lintian: a command without a man page"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/man/man1/d8-service-install.1.gz | gzip -d \
  | grep -q '^\.TH d8-service-install 1' || fail "the package's man page for d8 service install"
dpkg -i "$deb" > "$work/dpkg.log"
[ "$(/usr/bin/d8 --version)" = "d8 $version" ] || fail "installed d8 --version"
[ "$(stat -c %a /etc/d8/worker.env)" = 600 ] || fail "/etc/d8/worker.env is not 0600"
[ "$(stat -c %U /var/lib/d8)" = d8 ] || fail "/var/lib/d8 is not the d8 user's"
systemd-analyze verify /lib/systemd/system/d8-orchestrator.service /lib/systemd/system/d8-worker.service \
  || fail "systemd-analyze verify"
grep -q 'enable --now d8-orchestrator' "$work/dpkg.log" || fail "no hint printed"
# `d8 service install` on a packaged system uses the package's unit as it
# is (systemctl is a recorder: no systemd runs here) and only merges the
# settings into its env file.
mkdir -p "$work/fakebin"
printf '#!/bin/sh\necho "$*" >> "$SYSTEMCTL_LOG"\n' > "$work/fakebin/systemctl"; chmod +x "$work/fakebin/systemctl"
SYSTEMCTL_LOG=$work/systemctl-deb.log PATH=$work/fakebin:$PATH GROQ_API_KEY=gsk_smoke_deb_$$ /usr/bin/d8 service install --no-start \
  > "$work/deb-svc.log" || fail "d8 service install on the packaged system"
grep -E 'unit: (/usr)?/lib/systemd/system/d8-worker.service \(installed by a package; used as it is\)' "$work/deb-svc.log" >/dev/null \
  || { cat "$work/deb-svc.log" >&2; fail "the packaged unit was not used"; }
[ ! -e /etc/systemd/system/d8-worker.service ] || fail "a second unit was written over the package's"
grep "^GROQ_API_KEY=gsk_smoke_deb_$$\$" /etc/d8/worker.env >/dev/null || fail "the key did not reach /etc/d8/worker.env"
grep '^#ORCHESTRATOR_URL=' /etc/d8/worker.env >/dev/null || fail "the package's lines were not kept"
# The package names no provider: a key without one is pointed out.
grep -q '^note: GROQ_API_KEY set, but this worker runs no provider: set D8_PROVIDERS=groq' "$work/deb-svc.log" \
  || { cat "$work/deb-svc.log" >&2; fail "the unused key was not pointed out"; }
[ "$(stat -c %a /etc/d8/worker.env)" = 600 ] || fail "/etc/d8/worker.env is not 0600 after d8 service install"
dpkg --purge d8 > /dev/null
for left in /usr/bin/d8 /usr/bin/d8-desktop /etc/d8 /var/lib/d8 /lib/systemd/system/d8-worker.service /usr/share/man/man1/d8.1.gz; do
  [ ! -e "$left" ] || fail "$left left behind by the purge"
done
! getent passwd d8 >/dev/null || fail "the d8 user left behind"
echo "   installed, units verified, purged clean"

say "Linux tarball: install.sh, then install.sh --uninstall"
tarball=$(installer/linux/build-tarball.sh "$version" amd64 "$work/debbin" "$work")
tar -C "$work" -xzf "$tarball"
"$work/d8-$version-linux-amd64/install.sh" > "$work/install.log"
[ "$(/usr/local/bin/d8 --version)" = "d8 $version" ] || fail "tarball: d8 --version"
[ -f /usr/local/share/man/man1/d8-join.1 ] || fail "tarball: no man page for d8 join"
[ "$(stat -c %a /etc/d8/worker.env)" = 600 ] || fail "tarball: worker.env is not 0600"
systemd-analyze verify /etc/systemd/system/d8-orchestrator.service /etc/systemd/system/d8-worker.service \
  || fail "tarball: systemd-analyze verify"
"$work/d8-$version-linux-amd64/install.sh" --uninstall > /dev/null
for left in /usr/local/bin/d8 /usr/local/bin/d8-desktop /etc/d8 /var/lib/d8 /etc/systemd/system/d8-worker.service \
  /usr/local/share/man/man1/d8.1 /usr/local/share/man/man1/d8-desktop.1; do
  [ ! -e "$left" ] || fail "$left left behind by install.sh --uninstall"
done
! getent passwd d8 >/dev/null || fail "install.sh --uninstall left the d8 user"
echo "   installed, units verified, removed clean"

say "Linux: d8 service install|status|uninstall (systemd units)"
# systemd is not running here (no PID 1 systemd in CI), so systemctl is
# replaced by a recorder; the units d8 writes are checked by
# systemd-analyze, and the calls d8 makes are checked against the record.
mkdir -p "$work/fakebin"
cat > "$work/fakebin/systemctl" <<'SH'
#!/bin/sh
echo "$*" >> "$SYSTEMCTL_LOG"
case "$*" in *is-enabled*) echo enabled ;; *is-active*) echo active ;; esac
SH
chmod +x "$work/fakebin/systemctl"
export SYSTEMCTL_LOG=$work/systemctl.log
fake_key=gsk_smoke_not_a_key_$$
PATH=$work/fakebin:$PATH GROQ_API_KEY=$fake_key D8_PROVIDERS=groq "$native" service install --worker --system > "$work/svc.log" \
  || fail "d8 service install --system"
unit=/etc/systemd/system/d8-worker.service
systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
[ "$(stat -c %a /etc/d8/worker.env)" = 600 ] || fail "/etc/d8/worker.env is not 0600"
grep "^GROQ_API_KEY=$fake_key\$" /etc/d8/worker.env >/dev/null || fail "the key is not in the env file"
! grep -F "$fake_key" "$unit" "$work/svc.log" || fail "the key is in the unit or the output"
[ "$(cat "$SYSTEMCTL_LOG")" = "$(printf 'daemon-reload\nenable --now d8-worker')" ] || { cat "$SYSTEMCTL_LOG" >&2; fail "systemctl calls"; }
# A worker file in a home folder is refused (the unit's ProtectHome= hides
# it from the service), before anything changes.
cp /etc/d8/worker.env "$work/worker.env.before"
: > "$SYSTEMCTL_LOG"
if PATH=$work/fakebin:$PATH D8_CONFIG=/home/nobody-here/worker.toml "$native" service install --worker --system \
  > /dev/null 2> "$work/svc-home.err"; then fail "a worker file in a home folder was accepted"; fi
grep -q 'D8_CONFIG=/home/nobody-here/worker.toml: a system service does not see home folders' "$work/svc-home.err" \
  || { cat "$work/svc-home.err" >&2; fail "the home-folder refusal"; }
cmp -s /etc/d8/worker.env "$work/worker.env.before" && [ ! -s "$SYSTEMCTL_LOG" ] || fail "the refused install changed something"
PATH=$work/fakebin:$PATH "$native" service status --worker --system > "$work/svc-status.log" || fail "d8 service status"
grep 'd8-worker (system scope): enabled, active' "$work/svc-status.log" >/dev/null || fail "d8 service status words"
# User scope, as a person (HOME elsewhere): a user unit, checked the same way.
uhome=$work/home
mkdir -p "$uhome"
HOME=$uhome XDG_CONFIG_HOME=$uhome/.config XDG_DATA_HOME=$uhome/.local/share PATH=$work/fakebin:$PATH \
  "$native" service install --orchestrator --user --no-start > /dev/null || fail "d8 service install --user"
uunit=$uhome/.config/systemd/user/d8-orchestrator.service
mkdir -m 700 "$work/run"
XDG_RUNTIME_DIR=$work/run XDG_CONFIG_HOME=$uhome/.config systemd-analyze --user verify "$uunit" || fail "systemd-analyze --user verify"
grep -F "Environment=D8_DATA_DIR=$uhome/.local/share/d8/orchestrator" "$uunit" >/dev/null || fail "user unit's data dir"
PATH=$work/fakebin:$PATH "$native" service uninstall --worker --system > /dev/null || fail "d8 service uninstall"
[ ! -e "$unit" ] || fail "$unit left behind"
rm -rf /etc/d8
echo "   system and user units written and verified, key only in the 0600 env file, removed"

# --- macOS ----------------------------------------------------------------------
say "macOS: the bundle's Info.plist"
python3 - installer/macos/Info.plist <<'PY'
import plistlib, sys
d = plistlib.load(open(sys.argv[1], "rb"))
for k in ("CFBundleIdentifier", "CFBundleExecutable", "NSLocalNetworkUsageDescription"):
    assert d.get(k), k
assert d["NSBonjourServices"] == ["_d8._udp"], d["NSBonjourServices"]
print("   Info.plist:", d["CFBundleIdentifier"], d["CFBundleShortVersionString"])
PY
installer/macos/build-layout.sh "$version" "$work" > /dev/null

say "smoke passed"
