#!/bin/bash
# ec2jobs job wrapper: EC2 user data, run once as root by cloud-init at first boot.
# Rendered by controlplane/core/userdata.py, which substitutes the @@NAME@@ placeholders (shell-quoted values and
# quoted here-documents) and strips full-line comments and blank lines to save user-data bytes.
#
# It schedules a last-resort shutdown, pins the SSH host key, lets the relay's login user in, takes the job user's
# ways to root away, waits for the start bundle (envs, setup, run) the relay delivers over SSH, runs setup and run
# as the job user (one deadline for both) with their output copied by root into output.log, records the outcome in
# $STATE/result, waits for the log relay to mark the output drained, then terminates the instance. A cancel (the
# relay's relay/cancel marker) stops the job (SIGTERM, then SIGKILL) and goes through the same drain. An interrupt
# (relay/interrupt: AWS is taking the instance and the job will run again as its next attempt) stops it the same
# way, but the last sync of outputs and checkpoints still runs, since the next attempt resumes from them. A cancel
# wins over an interrupt.
# No `set -e` (a failed bookkeeping step must never skip termination), never `set -x` (this script holds the
# SSH host private key). Test seams: EC2JOBS_ROOT (prefix of every path, empty on EC2), EC2JOBS_IMDS_ENDPOINT,
# EC2JOBS_UPLOAD_RETRY_SECONDS, and the commands shutdown, aws, systemctl, curl, useradd, gpasswd and iptables taken
# from PATH.

# Step 1, before anything that could fail: the OS-level deadline (the instance terminates on shutdown).
START=$EPOCHSECONDS
shutdown -h +@@SHUTDOWN_MINUTES@@
DEADLINE_RC=$?

umask 022
ROOT=${EC2JOBS_ROOT:-}
IMDS=${EC2JOBS_IMDS_ENDPOINT:-http://169.254.169.254}
STATE=$ROOT/var/lib/ec2jobs
OUTPUT=$STATE/output.log
WORKDIR=$ROOT/workspace
JOB_DIR=$WORKDIR
OUTPUTS=$WORKDIR/outputs
CHECKPOINTS=$WORKDIR/checkpoints
TRANSFER=$STATE/ec2jobs_transfer.py
GRANTS=$STATE/relay/grants.json
SYNC_SECONDS=120
UPLOAD_RETRY=${EC2JOBS_UPLOAD_RETRY_SECONDS:-5}
SYNCER=
JOB_ID=@@JOB_ID@@
INSTANCE_TYPE=@@INSTANCE_TYPE@@
JOB_USER=@@SSH_USER@@
RELAY_USER=@@RELAY_USER@@
RELAY_HOME=$ROOT/var/lib/$RELAY_USER
RELAY=$STATE/relay
AUTHORIZED_KEY=@@SSH_AUTHORIZED_KEY@@
HOST_PUBLIC_KEY=@@HOST_PUBLIC_KEY@@
MAX_RUNTIME=@@MAX_RUNTIME_SECONDS@@
SHUTDOWN_MINUTES=@@SHUTDOWN_MINUTES@@
DRAIN_TIMEOUT=@@DRAIN_TIMEOUT_SECONDS@@
BUNDLE_TIMEOUT=@@BUNDLE_TIMEOUT_SECONDS@@
CANCEL_GRACE=@@CANCEL_GRACE_SECONDS@@
HAS_SETUP=0
CANCELLED=
INTERRUPTED=
UPLOADS=
KILL_AFTER=30
BASH_BIN=$BASH
# The child bash that runs a phase: $1 workdir, $2 env file, $3 phase script, $4 bash. A login shell first (so
# the AMI's /etc/profile.d applies, e.g. CUDA paths), then the job's env file (so the job's envs win), then the
# phase script. Positional parameters, so nothing the env file sets can change what runs.
LAUNCHER='cd -- "$1" || exit 1; exec "$4" --login -c ". \"\$1\"; exec \"\$2\" \"\$3\"" ec2jobs-phase "$2" "$4" "$3"'
TERMINATING=
PHASE=
CODE=
REASON=

# nap SECONDS: sleep without starting a process (the run loop looks for the relay's stop markers 20 times a second
# for the job's whole life): read's timeout on a pipe this shell holds open both ways, so nothing ever arrives.
# `sleep` if that pipe could not be made. The job's own processes never inherit it (job_command closes it).
NAP_FD=
exec {NAP_FD}<> <(:) || NAP_FD=
nap() {
  if [ -n "$NAP_FD" ]; then
    read -r -t "$1" -u "$NAP_FD" _
  else
    sleep "$1"
  fi
}

log() {
  local line
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) $*"
  printf '%s\n' "$line" 2>/dev/null >>"$STATE/wrapper.log"
  printf 'ec2jobs: %s\n' "$line"
}

# put_file PATH MODE < content: atomically replace PATH (temporary file in the same directory, then rename).
put_file() {
  local tmp
  tmp=$(mktemp "$1.XXXXXX") || return 1
  if cat >"$tmp" && chmod "$2" "$tmp" && mv -f "$tmp" "$1"; then
    return 0
  fi
  rm -f "$tmp"
  return 1
}

# give PATH...: hand paths to the job user, only when we are root and the user exists (best effort).
give() {
  [ "$IS_ROOT" = 1 ] && [ "$USER_EXISTS" = 1 ] || return 0
  chown "$JOB_USER:$JOB_GROUP" "$@" 2>/dev/null || log "warning: could not chown $* to $JOB_USER"
}

identify_user() {
  IS_ROOT=0
  [ "$EUID" = 0 ] && IS_ROOT=1
  USER_EXISTS=0
  JOB_GROUP=
  SWITCH_USER=0
  if id -u "$JOB_USER" >/dev/null 2>&1; then
    USER_EXISTS=1
    JOB_GROUP=$(id -g "$JOB_USER")
    if [ "$IS_ROOT" = 1 ] && [ "$(id -u "$JOB_USER")" != 0 ]; then
      SWITCH_USER=1
    fi
  fi
  JOB_HOME=
  if [ -z "$ROOT" ] && [ "$USER_EXISTS" = 1 ]; then
    JOB_HOME=$(getent passwd "$JOB_USER" | cut -d: -f6)
  fi
  [ -n "$JOB_HOME" ] || JOB_HOME=$ROOT/home/$JOB_USER
}

# Step 2: the relay's login user, a system user created here when missing (several boots of one image may race
# for /etc/passwd's lock: retried). Its password is "*" (no password, but not locked: sshd refuses locked accounts
# when it does not use PAM). Without root (a local sandbox run as one user) the relay logs in as that user.
ensure_relay_user() {
  [ "$IS_ROOT" = 1 ] || return 0
  local try
  for try in 1 2 3 4 5 6 7 8 9 10; do
    id -u "$RELAY_USER" >/dev/null 2>&1 && return 0
    useradd --system --no-create-home --home-dir "/var/lib/$RELAY_USER" --shell /bin/bash -p '*' "$RELAY_USER" \
      >/dev/null 2>&1 && { log "created the relay user $RELAY_USER"; return 0; }
    sleep 0.5
  done
  id -u "$RELAY_USER" >/dev/null 2>&1 || log "ERROR: could not create the relay user $RELAY_USER"
}

# Step 3: the pinned host key (the relay trusts only it) and the relay's login key, in a home only root can change.
install_ssh_keys() {
  local dir=$ROOT/etc/ssh keys=$RELAY_HOME/.ssh/authorized_keys
  mkdir -p "$dir"
  put_file "$dir/ssh_host_ed25519_key" 600 <<'@@HOST_KEY_DELIM@@'
@@HOST_PRIVATE_KEY@@
@@HOST_KEY_DELIM@@
  if [ $? = 0 ] && printf '%s\n' "$HOST_PUBLIC_KEY" | put_file "$dir/ssh_host_ed25519_key.pub" 644; then
    log "installed the pinned SSH host key"
  else
    log "ERROR: could not install the SSH host key"
  fi
  mkdir -p "$RELAY_HOME/.ssh" && chmod 755 "$RELAY_HOME" "$RELAY_HOME/.ssh"
  if printf '%s\n' "$AUTHORIZED_KEY" | put_file "$keys" 644; then
    log "authorized the relay's key for $RELAY_USER"
  else
    log "ERROR: could not authorize the relay's key for $RELAY_USER"
  fi
  # Reload a running sshd so it serves the new key (a socket-activated one reads it on the next connection).
  if systemctl try-reload-or-restart ssh.service >/dev/null 2>&1; then
    log "reloaded ssh.service"
  elif systemctl try-reload-or-restart sshd.service >/dev/null 2>&1; then
    log "reloaded sshd.service"
  else
    log "warning: could not reload sshd"
  fi
}

# Step 4: the job user keeps no way to root (so it can rewrite neither the outcome nor what the relay reads) and no
# IMDS (whose user data holds the host key). Best effort, each step logged: sudoers lines naming the user, the
# groups that are root in disguise, and an iptables owner rule for IMDS.
drop_privileges() {
  [ "$SWITCH_USER" = 1 ] || return 0
  local file group uid pattern
  pattern="^[[:space:]]*${JOB_USER//./\\.}[[:space:]]"
  for file in "$ROOT/etc/sudoers" "$ROOT"/etc/sudoers.d/*; do
    [ -f "$file" ] && grep -q "$pattern" "$file" 2>/dev/null || continue
    if sed -i "/$pattern/d" "$file"; then
      log "removed $JOB_USER's sudo rights from $file"
    else
      log "ERROR: could not remove $JOB_USER's sudo rights from $file"
    fi
  done
  for group in $(id -nG "$JOB_USER" 2>/dev/null); do
    case $group in
      sudo | admin | wheel | docker | lxd)
        gpasswd -d "$JOB_USER" "$group" >/dev/null 2>&1 && log "removed $JOB_USER from group $group" ||
          log "ERROR: could not remove $JOB_USER from group $group" ;;
    esac
  done
  uid=$(id -u "$JOB_USER")
  if iptables -w 10 -I OUTPUT 1 -d 169.254.169.254/32 -m owner --uid-owner "$uid" -j REJECT >/dev/null 2>&1; then
    log "blocked IMDS for $JOB_USER"
  else
    log "warning: could not block IMDS for $JOB_USER (iptables)"
  fi
  ip6tables -w 10 -I OUTPUT 1 -d fd00:ec2::254/128 -m owner --uid-owner "$uid" -j REJECT >/dev/null 2>&1
}

# Step 5: the start bundle. The relay unpacks it into relay/bundle (a directory rename: all of it or nothing);
# copied into root's state directory, with the job's own files handed to the job user.
wait_for_bundle() {
  local end=$((EPOCHSECONDS + BUNDLE_TIMEOUT)) name
  log "waiting for the start bundle from the relay (up to ${BUNDLE_TIMEOUT}s)"
  while :; do
    stop_requested "before the job started" && return 1
    if [ -f "$RELAY/bundle/run.sh" ]; then
      if ! grep -qxF "job_id=$JOB_ID" "$RELAY/bundle/meta" 2>/dev/null; then
        log "ERROR: the start bundle is not for job $JOB_ID; ignored"
      else
        break
      fi
    fi
    if ((EPOCHSECONDS >= end)); then
      log "no start bundle after ${BUNDLE_TIMEOUT}s: the relay never reached this instance; terminating"
      return 1
    fi
    sleep 0.2
  done
  for name in env.sh setup.sh run.sh inputs ec2jobs_transfer.py; do
    put_file "$STATE/$name" 600 <"$RELAY/bundle/$name" || log "ERROR: could not write $name"
  done
  give "$STATE/env.sh" "$STATE/setup.sh" "$STATE/run.sh"
  grep -q '[^[:space:]]' "$STATE/setup.sh" 2>/dev/null && HAS_SETUP=1
  log "start bundle received"
  return 0
}

# stop_requested WHEN: the relay's cancel or interrupt marker (a cancel wins) found before a phase starts: the job
# does not start (or run does not follow setup). Sets CANCELLED or INTERRUPTED, and REASON; 1 when neither is there.
stop_requested() {
  if [ -e "$RELAY/cancel" ]; then
    CANCELLED=1 REASON=CANCELLED
    log "cancelled $1"
  elif [ -e "$RELAY/interrupt" ]; then
    INTERRUPTED=1 REASON=INTERRUPTED
    log "interrupted $1: nothing more runs on this instance (the next attempt starts elsewhere)"
  else
    return 1
  fi
  return 0
}

# input NAME: a value from the bundle's inputs (empty when absent).
input() {
  sed -n "s/^$1=//p" "$STATE/inputs" 2>/dev/null | head -n 1
}

# transfer ARGS...: the instance's S3 client, with the relay's short-lived grants (as root: the job cannot read them).
transfer() {
  timeout 3600 python3 "$TRANSFER" --grants "$GRANTS" "$@"
}

# inputs_failed MESSAGE: the job cannot start; the reason goes to its own log (the user sees it) and the result.
inputs_failed() {
  printf 'ec2jobs: %s\n' "$1" >>"$OUTPUT"
  log "inputs failed: $1"
  PHASE=inputs CODE=1 REASON=INPUTS_FAILED
}

# Step 5b: the job's inputs, before setup: its workdir (an uploaded archive, or a git clone as the job user), its
# file_mounts, and the checkpoints it resumes from: resume_from's, or (resume_own=1, attempt 2 on) the job's own
# from the previous attempt's last sync, recorded in the periodic sync's state so they are not uploaded again.
# Returns 1 (with INPUTS_FAILED) when one cannot be fetched.
fetch_inputs() {
  local key url ref secret mounts resume own err token placed tries line
  SYNC_SECONDS=$(input sync_seconds)
  [[ $SYNC_SECONDS =~ ^[0-9]{1,6}$ ]] && ((SYNC_SECONDS >= 10)) || SYNC_SECONDS=120
  key=$(input workdir_key) url=$(input workdir_url) ref=$(input workdir_ref) secret=$(input workdir_token_secret)
  mounts=$(input mounts_key) resume=$(input resume_prefix) own=$(input resume_own)
  if [ -n "$key$url" ]; then
    JOB_DIR=$WORKDIR/workdir
    mkdir -p "$JOB_DIR" && chmod 755 "$JOB_DIR" && give "$JOB_DIR"
  fi
  [ -n "$key$mounts$resume" ] || [ -n "$url" ] || return 0
  if [ -n "$key$mounts$resume" ]; then
    command -v python3 >/dev/null 2>&1 || { inputs_failed "python3 is not installed on the image"; return 1; }
    for ((tries = 0; tries < 300; tries++)); do
      [ -s "$GRANTS" ] && break
      sleep 0.2
    done
    [ -s "$GRANTS" ] || { inputs_failed "the relay handed over no storage grants (60 s)"; return 1; }
  fi
  if [ -n "$key" ]; then
    err=$(transfer extract "$key" "$JOB_DIR" 2>&1 >/dev/null) || { inputs_failed "fetching the workdir failed: $err"; return 1; }
    give_tree "$JOB_DIR"
    log "workdir unpacked into $JOB_DIR"
  elif [ -n "$url" ]; then
    token=
    if [ -n "$secret" ]; then
      token=$(. "$STATE/env.sh" && printf '%s' "${!secret}")
      [ -n "$token" ] || { inputs_failed "workdir.token_secret names $secret, which has no value"; return 1; }
    fi
    err=$(git_clone "$url" "$ref" "$token" 2>&1) || { inputs_failed "cloning the workdir failed: ${err##*$'\n'}"; return 1; }
    log "workdir cloned into $JOB_DIR"
  fi
  if [ -n "$mounts" ]; then
    placed=$(transfer mounts "$mounts" "$ROOT" --home "$JOB_HOME" 2>"$STATE/mounts.err") ||
      { inputs_failed "placing the file_mounts failed: $(tail -n 1 "$STATE/mounts.err")"; return 1; }
    while IFS= read -r line; do  # "placed <path> (file)" / "placed <path> (dir, N files)"
      line=${line#placed }
      line=${line% (*}
      [ -e "$line" ] && give_tree "$line"
    done < <(printf '%s\n' "$placed" | grep '^placed ')
    log "file_mounts placed"
  fi
  if [ -n "$resume" ] && [ "$own" = 1 ]; then
    err=$(transfer sync-down checkpoints "$CHECKPOINTS" --from-prefix "$resume" \
      --state "$STATE/sync-checkpoints.json" 2>&1 >/dev/null) ||
      { inputs_failed "restoring the checkpoints of the previous attempt failed: $err"; return 1; }
    give_tree "$CHECKPOINTS"
    log "checkpoints restored from the previous attempt ($resume)"
  elif [ -n "$resume" ]; then
    err=$(transfer sync-down checkpoints "$CHECKPOINTS" --from-prefix "$resume" 2>&1 >/dev/null) ||
      { inputs_failed "restoring the checkpoints of resume_from failed: $err"; return 1; }
    give_tree "$CHECKPOINTS"
    log "checkpoints restored from $resume"
  fi
  return 0
}

# git_clone URL REF TOKEN: clone as the job user (a token, if any, only through GIT_ASKPASS's environment).
git_clone() {
  local -a as=() auth=()
  command -v git >/dev/null 2>&1 || { echo "git is not installed on the image"; return 1; }
  [ "$SWITCH_USER" = 1 ] && as=(runuser -u "$JOB_USER" --)
  if [ -n "$3" ]; then
    printf '#!/bin/sh\ncase "$1" in Username*) echo x-access-token ;; *) printf "%%s\\n" "$EC2JOBS_GIT_TOKEN" ;; esac\n' |
      put_file "$STATE/askpass" 755 || return 1
    auth=("GIT_ASKPASS=$STATE/askpass" "EC2JOBS_GIT_TOKEN=$3")
  fi
  "${as[@]}" env "HOME=$JOB_HOME" GIT_TERMINAL_PROMPT=0 "${auth[@]}" git clone --quiet -- "$1" "$JOB_DIR" || return 1
  if [ -n "$2" ]; then
    "${as[@]}" env "HOME=$JOB_HOME" GIT_TERMINAL_PROMPT=0 "${auth[@]}" git -C "$JOB_DIR" checkout --quiet "$2" ||
      return 1
  fi
}

# give_tree PATH: everything under PATH to the job user.
give_tree() {
  [ "$IS_ROOT" = 1 ] && [ "$USER_EXISTS" = 1 ] || return 0
  chown -R "$JOB_USER:$JOB_GROUP" "$1" 2>/dev/null || log "warning: could not chown $1 to $JOB_USER"
}

# sync_area AREA: upload what changed in outputs or checkpoints (new and changed files only).
sync_area() {
  local dir=$OUTPUTS
  [ "$1" = checkpoints ] && dir=$CHECKPOINTS
  [ -s "$GRANTS" ] && [ -n "$(find "$dir" -mindepth 1 -print -quit 2>/dev/null)" ] || return 0
  transfer sync-up "$dir" "$1" --state "$STATE/sync-$1.json" >>"$STATE/wrapper.log" 2>&1
}

# While the job runs: outputs and checkpoints are uploaded every SYNC_SECONDS (what changed since the last time).
start_syncer() {
  command -v python3 >/dev/null 2>&1 || return 0
  (
    # final_sync stops it: syncer.stop, then SIGUSR1, which ends the wait for the next round at once (bash runs
    # the trap when `wait` returns; an upload in progress finishes first). Before the trap is set, SIGUSR1's
    # default action ends the subshell, which had nothing in progress either.
    trap 'touch "$STATE/syncer.stop"' USR1
    while :; do
      sleep "$SYNC_SECONDS" &
      nap=$!
      wait "$nap"
      if [ -e "$STATE/syncer.stop" ]; then
        kill "$nap" 2>/dev/null  # our own child, not reaped yet: its PID is still its own
        exit 0
      fi
      sync_area checkpoints || log "warning: syncing checkpoints failed (retried next time)"
      sync_area outputs || log "warning: syncing outputs failed (retried next time)"
      [ -e "$STATE/syncer.stop" ] && exit 0
    done
  ) &
  SYNCER=$!
}

# After the job: the last upload of each area, retried, and its outcome for the result (ok, failed or none).
final_sync() {
  local area tries status
  if [ -n "$SYNCER" ]; then
    touch "$STATE/syncer.stop"
    kill -USR1 "$SYNCER" 2>/dev/null  # not reaped before the wait below: still the syncer's PID
    wait "$SYNCER"
  fi
  UPLOADS=
  # A cancelled job keeps what the periodic syncs uploaded; an interrupted one is synced (its next attempt resumes).
  [ -n "$CANCELLED" ] && return 0
  command -v python3 >/dev/null 2>&1 || return 0
  for area in outputs checkpoints; do
    status=none
    for tries in 1 2 3; do
      if sync_area "$area"; then
        [ -e "$STATE/sync-$area.json" ] && status=ok
        break
      fi
      status=failed
      log "uploading $area failed (attempt $tries of 3)"
      ((tries < 3)) && sleep $((tries * UPLOAD_RETRY))
    done
    UPLOADS+="$area=$status"$'\n'
  done
}

# The workdir, readable and writable by the job user; output.log stays root's (a root process copies the job's
# output into it from a pipe, so the job can neither truncate nor replace what the relay reads by offset).
write_inputs() {
  mkdir -p "$WORKDIR" "$OUTPUTS" "$CHECKPOINTS" && chmod 755 "$WORKDIR" "$OUTPUTS" "$CHECKPOINTS"
  give "$WORKDIR" "$OUTPUTS" "$CHECKPOINTS"
  mkdir -p "$JOB_HOME" && give "$JOB_HOME"
  : >>"$OUTPUT" && chmod 644 "$OUTPUT"
}

# job_command PHASE SECONDS: the phase as the job user, killed (with its process group) at the deadline.
job_command() {
  local -a cmd=()
  if [ "$SWITCH_USER" = 1 ]; then
    cmd=(runuser -u "$JOB_USER" -- env "HOME=$JOB_HOME" "USER=$JOB_USER" "LOGNAME=$JOB_USER")
  else
    cmd=(env "HOME=$JOB_HOME")
  fi
  cmd+=(timeout "--kill-after=$KILL_AFTER" "$2s")
  if command -v stdbuf >/dev/null 2>&1; then
    cmd+=(stdbuf -oL -eL)
  fi
  cmd+=("$BASH_BIN" -c "$LAUNCHER" "ec2jobs-$1" "$JOB_DIR" "$STATE/env.sh" "$STATE/$1.sh" "$BASH_BIN")
  if [ -n "$NAP_FD" ]; then
    "${cmd[@]}" {NAP_FD}<&-
  else
    "${cmd[@]}"
  fi
}

# run_phase PHASE: sets PHASE, CODE and REASON. The job writes into a FIFO; a root `cat` appends it to output.log.
# While the phase runs, a cancel or interrupt marker from the relay stops it: SIGTERM to every process holding the
# pipe, then SIGKILL after CANCEL_GRACE seconds (a cancel after an interrupt still turns the outcome into CANCELLED).
run_phase() {
  local remaining rc fifo copier job
  PHASE=$1
  remaining=$((START + MAX_RUNTIME - EPOCHSECONDS))
  if ((remaining <= 0)); then
    log "max runtime (${MAX_RUNTIME}s) reached before $PHASE could start"
    CODE=124
    REASON=MAX_RUNTIME
    return
  fi
  printf '%s\n' "$PHASE" | put_file "$STATE/phase" 644 || log "warning: could not write the phase file"
  fifo=$STATE/pipe.$PHASE
  rm -f "$fifo"
  if ! mkfifo -m 600 "$fifo"; then
    log "ERROR: could not create the output pipe"
    CODE=125
    REASON=EXIT_NONZERO
    return
  fi
  cat "$fifo" >>"$OUTPUT" &
  copier=$!
  log "$PHASE starting (${remaining}s left before the max runtime)"
  job_command "$PHASE" "$remaining" </dev/null >"$fifo" 2>&1 &
  job=$!
  while kill -0 "$job" 2>/dev/null; do
    if [ -z "$CANCELLED" ] && [ -e "$RELAY/cancel" ]; then
      CANCELLED=1
      log "cancelled: stopping the job (SIGTERM, SIGKILL after ${CANCEL_GRACE}s)"
      stop_holders "$fifo" "$CANCEL_GRACE"
      continue  # the job is likely gone already: look at once
    elif [ -z "$CANCELLED$INTERRUPTED" ] && [ -e "$RELAY/interrupt" ]; then
      INTERRUPTED=1
      log "interrupted: stopping the job for its next attempt (SIGTERM, SIGKILL after ${CANCEL_GRACE}s)"
      stop_holders "$fifo" "$CANCEL_GRACE"
      continue
    fi
    nap 0.05  # a stop marker is seen within 0.05 s
  done
  wait "$job"
  rc=$?
  if [ -n "$INTERRUPTED" ] && [ -z "$CANCELLED" ] && [ -e "$RELAY/cancel" ]; then
    CANCELLED=1  # cancelled while the interrupt stopped the job: a cancel wins (and skips the last sync)
    log "cancelled while the job was stopping for the interrupt"
  fi
  stop_holders "$fifo" 5
  wait "$copier"
  rm -f "$fifo"
  CODE=$rc
  if [ -n "$CANCELLED" ]; then
    REASON=CANCELLED
  elif [ -n "$INTERRUPTED" ]; then
    REASON=INTERRUPTED
  elif ((rc == 0)); then
    REASON=SUCCEEDED
  elif (((rc == 124 || rc == 137) && EPOCHSECONDS >= START + MAX_RUNTIME)); then
    REASON=MAX_RUNTIME
  elif [ "$PHASE" = setup ]; then
    REASON=SETUP_FAILED
  else
    REASON=EXIT_NONZERO
  fi
  log "$PHASE finished with exit code $rc ($REASON)"
}

# Step 6: setup (if any), then run only if setup succeeded and was not stopped (a setup that traps SIGTERM may
# still exit 0), and no cancel or interrupt arrived in between.
run_job() {
  if [ "$HAS_SETUP" = 1 ]; then
    run_phase setup
    [ "$CODE" = 0 ] && [ -z "$CANCELLED$INTERRUPTED" ] || return
    stop_requested "after setup, before run" && return
  fi
  run_phase run
}

# PIDs (other than ours) holding $1 open for writing; with the job in its own user, only that user's processes
# (runuser and timeout, root's, end by themselves once the job's processes are gone, and say nothing in its output).
holders() {
  local link dir pid found=" " fd flags owner job_uid=
  [ "$SWITCH_USER" = 1 ] && job_uid=$(id -u "$JOB_USER")
  while IFS=$'\t' read -r link dir fd; do
    [ "$link" = "$1" ] || continue
    pid=${dir#/proc/}
    pid=${pid%/fd}
    if [ "$pid" = "$$" ] || [ "$pid" = "$BASHPID" ]; then
      continue
    fi
    # Writers only (access mode O_WRONLY or O_RDWR): a reader such as the relay's SSH read must be left alone.
    flags=$(sed -n 's/^flags:[[:space:]]*//p' "/proc/$pid/fdinfo/$fd" 2>/dev/null)
    [ -n "$flags" ] && (((8#$flags & 3) == 0)) && continue
    if [ -n "$job_uid" ]; then
      owner=$(sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
      [ "$owner" = "$job_uid" ] || continue
    fi
    case $found in *" $pid "*) ;; *) found+="$pid " ;; esac
  done < <(find /proc/[0-9]*/fd -mindepth 1 -maxdepth 1 -type l -printf '%l\t%h\t%f\n' 2>/dev/null)
  found=${found# }
  printf '%s' "${found% }"
}

# stop_holders PIPE GRACE: stop every process still writing into the phase's output pipe: the job at a cancel, or
# processes that outlived their phase (backgrounded, daemonized), which must not write output after the result.
# SIGTERM, then SIGKILL after GRACE seconds.
stop_holders() {
  local target=$1 grace=$2 pids tries
  pids=$(holders "$target")
  [ -n "$pids" ] || return 0
  log "stopping job processes that still write output: $pids"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null
  for ((tries = grace * 20; tries > 0; tries--)); do  # a job that exits at SIGTERM is seen gone within 0.05 s
    nap 0.05
    pids=$(holders "$target")
    [ -n "$pids" ] || return 0
  done
  log "killing job processes: $pids"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
  for _ in {1..25}; do
    sleep 0.2
    pids=$(holders "$target")
    [ -n "$pids" ] || return 0
  done
  log "warning: processes still hold the output pipe: $pids"
}

# Step 7: the outcome, written once every job process is gone (output.log is complete).
write_result() {
  printf 'phase=%s\nexit_code=%s\nreason=%s\n%sfinished_at=%s\n' "$PHASE" "$CODE" "$REASON" "$UPLOADS" \
    "$EPOCHSECONDS" | put_file "$STATE/result" 644 || log "ERROR: could not write the result"
  log "result: phase=$PHASE exit_code=$CODE reason=$REASON"
}

# Step 8: the relay creates $STATE/relay/drained once the whole output is written to the logs table (not just
# read). Until then it keeps $STATE/relay/progress at the byte offset it has durably written: a backlog (output
# written faster than the logs table accepts it) drains for as long as that keeps advancing; DRAIN_TIMEOUT seconds
# without progress (the relay is gone) end the wait. The OS-level shutdown scheduled in step 1 stays the hard bound.
wait_drained() {
  local idle_end=$((EPOCHSECONDS + DRAIN_TIMEOUT)) seen=-1 mark
  log "waiting for the log relay to drain the output (up to ${DRAIN_TIMEOUT}s without progress)"
  while :; do
    if [ -e "$STATE/relay/drained" ]; then
      log "drained marker found"
      return 0
    fi
    mark=
    read -r mark 2>/dev/null <"$STATE/relay/progress"
    if [[ $mark =~ ^[0-9]{1,18}$ ]] && ((10#$mark > seen)); then
      ((seen < 0)) || log "the relay has written ${mark} bytes of the output"
      seen=$((10#$mark))
      idle_end=$((EPOCHSECONDS + DRAIN_TIMEOUT))
    fi
    ((EPOCHSECONDS < idle_end)) || break
    sleep 1
  done
  log "no drained marker after ${DRAIN_TIMEOUT}s without relay progress; terminating anyway"
}

imds_get() {
  curl -sf --max-time 10 -H "X-aws-ec2-metadata-token: $1" "$IMDS/latest/meta-data/$2"
}

# Step 9: terminate through the EC2 API, else shut down (the instance's shutdown behaviour is terminate). Once.
terminate_self() {
  [ -z "$TERMINATING" ] || return 0
  TERMINATING=1
  local token instance_id region
  if ! command -v aws >/dev/null 2>&1; then
    log "the aws CLI is not installed"
  elif ! token=$(curl -sf --max-time 10 -X PUT "$IMDS/latest/api/token" \
    -H "X-aws-ec2-metadata-token-ttl-seconds: 300") || [ -z "$token" ]; then
    log "could not get an IMDSv2 token"
  elif ! instance_id=$(imds_get "$token" instance-id) || [ -z "$instance_id" ] ||
    ! region=$(imds_get "$token" placement/region) || [ -z "$region" ]; then
    log "could not read the instance id and region from IMDS"
  elif AWS_PAGER='' timeout 120 aws ec2 terminate-instances --region "$region" --instance-ids "$instance_id" \
    >>"$STATE/wrapper.log" 2>&1; then
    log "terminating: aws ec2 terminate-instances $instance_id ($region) accepted"
    return 0
  else
    log "aws ec2 terminate-instances $instance_id ($region) failed"
  fi
  log "terminating: shutdown -h now"
  shutdown -h now
}

# A reboot ends the job (cloud-init runs this wrapper once, and a scheduled shutdown does not survive it): a
# per-boot script terminates the instance on any later boot, so a rebooted instance can never keep billing.
install_reboot_guard() {
  local dir=$ROOT/var/lib/cloud/scripts/per-boot
  cat /proc/sys/kernel/random/boot_id 2>/dev/null | put_file "$STATE/boot_id" 644 || log "warning: no boot id"
  mkdir -p "$dir" || { log "ERROR: could not install the reboot guard"; return; }
  {
    printf '#!/bin/bash\n'
    cat <<'EC2JOBS_GUARD_EOF'
STATE=${EC2JOBS_ROOT:-}/var/lib/ec2jobs
[ "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)" = "$(cat "$STATE/boot_id" 2>/dev/null)" ] && exit 0
printf '%s the instance rebooted: its job ended with the reboot; shutting down (terminates the instance)\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$STATE/wrapper.log"
shutdown -h now
EC2JOBS_GUARD_EOF
  } | put_file "$dir/ec2jobs-reboot-guard.sh" 755 && log "installed the reboot guard" ||
    log "ERROR: could not install the reboot guard"
}

on_exit() {
  local rc=$?
  if [ -z "$TERMINATING" ]; then
    log "the wrapper stopped unexpectedly (status $rc); terminating the instance"
    terminate_self
  fi
}

main() {
  mkdir -p "$RELAY" && chmod 755 "$STATE" && chmod 700 "$RELAY"
  identify_user
  ensure_relay_user
  if [ "$IS_ROOT" = 1 ]; then  # the one place the relay writes: bundle, progress, cancel, interrupt, drained
    chown "$RELAY_USER:$(id -g "$RELAY_USER" 2>/dev/null)" "$RELAY" 2>/dev/null ||
      log "ERROR: could not give $RELAY to $RELAY_USER"
  fi
  log "ec2jobs wrapper for job $JOB_ID on $INSTANCE_TYPE: max runtime ${MAX_RUNTIME}s, job user $JOB_USER"
  if [ "$IS_ROOT" = 1 ] && [ "$USER_EXISTS" = 0 ]; then
    log "warning: user $JOB_USER does not exist; the job runs as root"
  fi
  if [ "$DEADLINE_RC" = 0 ]; then
    log "deadline scheduled: shutdown -h +$SHUTDOWN_MINUTES"
  else
    log "ERROR: scheduling the deadline shutdown failed (status $DEADLINE_RC)"
  fi
  install_ssh_keys
  install_reboot_guard
  drop_privileges
  write_inputs
  if wait_for_bundle; then
    if ! fetch_inputs; then
      final_sync
    elif stop_requested "before the job started"; then
      PHASE=start CODE=  # nothing ran: nothing new to upload
    else
      start_syncer
      run_job
      final_sync
    fi
  elif [ -n "$CANCELLED$INTERRUPTED" ]; then
    PHASE=start CODE=  # REASON: CANCELLED or INTERRUPTED (stop_requested)
  else
    terminate_self
    return
  fi
  write_result
  wait_drained
  terminate_self
}

trap on_exit EXIT
trap 'log "received SIGTERM"; exit 143' TERM
trap 'log "received SIGHUP"; exit 129' HUP
trap 'log "received SIGINT"; exit 130' INT
main
exit 0
