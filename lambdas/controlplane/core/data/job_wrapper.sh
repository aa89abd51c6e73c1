#!/bin/bash
# ec2jobs job wrapper: EC2 user data, run once as root by cloud-init at first boot.
# Rendered by controlplane/core/userdata.py, which substitutes the @@NAME@@ placeholders (shell-quoted values and
# quoted here-documents) and strips full-line comments and blank lines to save user-data bytes.
#
# It schedules a last-resort shutdown, pins the SSH host key, installs the relay's login key, runs the job's setup
# and run as the login user (one deadline for both), records the outcome in $STATE/result, waits for the log relay
# to mark the output drained, then terminates the instance.
# No `set -e` (a failed bookkeeping step must never skip termination), never `set -x` (this script holds the
# SSH host private key). Test seams: EC2JOBS_ROOT (prefix of every path, empty on EC2), EC2JOBS_IMDS_ENDPOINT, and
# the commands shutdown, aws, systemctl and curl taken from PATH.

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
JOB_ID=@@JOB_ID@@
INSTANCE_TYPE=@@INSTANCE_TYPE@@
JOB_USER=@@SSH_USER@@
AUTHORIZED_KEY=@@SSH_AUTHORIZED_KEY@@
HOST_PUBLIC_KEY=@@HOST_PUBLIC_KEY@@
MAX_RUNTIME=@@MAX_RUNTIME_SECONDS@@
SHUTDOWN_MINUTES=@@SHUTDOWN_MINUTES@@
DRAIN_TIMEOUT=@@DRAIN_TIMEOUT_SECONDS@@
HAS_SETUP=@@HAS_SETUP@@
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

# Step 2: the pinned host key (the relay trusts only it) and the relay's login key.
install_ssh_keys() {
  local dir=$ROOT/etc/ssh ssh_dir=$JOB_HOME/.ssh
  local keys=$JOB_HOME/.ssh/authorized_keys
  mkdir -p "$dir"
  put_file "$dir/ssh_host_ed25519_key" 600 <<'@@HOST_KEY_DELIM@@'
@@HOST_PRIVATE_KEY@@
@@HOST_KEY_DELIM@@
  if [ $? = 0 ] && printf '%s\n' "$HOST_PUBLIC_KEY" | put_file "$dir/ssh_host_ed25519_key.pub" 644; then
    log "installed the pinned SSH host key"
  else
    log "ERROR: could not install the SSH host key"
  fi
  # Reload a running sshd so it serves the new key (a socket-activated one reads it on the next connection).
  if systemctl try-reload-or-restart ssh.service >/dev/null 2>&1; then
    log "reloaded ssh.service"
  elif systemctl try-reload-or-restart sshd.service >/dev/null 2>&1; then
    log "reloaded sshd.service"
  else
    log "warning: could not reload sshd"
  fi
  mkdir -p "$ssh_dir" && chmod 700 "$ssh_dir"
  touch "$keys" && chmod 600 "$keys"
  if ! grep -qxF -- "$AUTHORIZED_KEY" "$keys" 2>/dev/null; then
    if [ -s "$keys" ] && [ -n "$(tail -c 1 "$keys")" ]; then
      printf '\n' >>"$keys"
    fi
    if printf '%s\n' "$AUTHORIZED_KEY" >>"$keys"; then
      log "authorized the relay's key for $JOB_USER"
    else
      log "ERROR: could not authorize the relay's key for $JOB_USER"
    fi
  fi
  give "$JOB_HOME" "$ssh_dir" "$keys"
}

# Steps 3 and 4: the workdir, the phase scripts and the environment, all readable by the job user.
write_inputs() {
  mkdir -p "$WORKDIR" && chmod 755 "$WORKDIR"
  give "$WORKDIR"
  put_file "$STATE/env.sh" 600 <<'@@ENV_DELIM@@'
@@ENV_BODY@@
@@ENV_DELIM@@
  [ $? = 0 ] || log "ERROR: could not write env.sh"
  put_file "$STATE/setup.sh" 600 <<'@@SETUP_DELIM@@'
@@SETUP_BODY@@
@@SETUP_DELIM@@
  [ $? = 0 ] || log "ERROR: could not write setup.sh"
  put_file "$STATE/run.sh" 600 <<'@@RUN_DELIM@@'
@@RUN_BODY@@
@@RUN_DELIM@@
  [ $? = 0 ] || log "ERROR: could not write run.sh"
  give "$STATE/env.sh" "$STATE/setup.sh" "$STATE/run.sh"
  : >>"$OUTPUT" && chmod 644 "$OUTPUT"
  # output.log stays root's (the job writes it through the descriptor the wrapper opened, never by path), so the
  # job cannot truncate or replace what the relay reads by offset; the same for result.
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
  "${cmd[@]}" "$BASH_BIN" -c "$LAUNCHER" "ec2jobs-$1" "$WORKDIR" "$STATE/env.sh" "$STATE/$1.sh" "$BASH_BIN"
}

# run_phase PHASE: sets PHASE, CODE and REASON.
run_phase() {
  local remaining rc
  PHASE=$1
  remaining=$((START + MAX_RUNTIME - EPOCHSECONDS))
  if ((remaining <= 0)); then
    log "max runtime (${MAX_RUNTIME}s) reached before $PHASE could start"
    CODE=124
    REASON=MAX_RUNTIME
    return
  fi
  printf '%s\n' "$PHASE" | put_file "$STATE/phase" 644 || log "warning: could not write the phase file"
  log "$PHASE starting (${remaining}s left before the max runtime)"
  job_command "$PHASE" "$remaining" </dev/null >>"$OUTPUT" 2>&1
  rc=$?
  CODE=$rc
  if ((rc == 0)); then
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

# Step 5: setup (if any), then run only if setup succeeded.
run_job() {
  if [ "$HAS_SETUP" = 1 ]; then
    run_phase setup
    [ "$CODE" = 0 ] || return
  fi
  run_phase run
}

# PIDs (other than ours) holding $1 open for writing.
holders() {
  local link dir pid found=" " fd flags
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
    case $found in *" $pid "*) ;; *) found+="$pid " ;; esac
  done < <(find /proc/[0-9]*/fd -mindepth 1 -maxdepth 1 -type l -printf '%l\t%h\t%f\n' 2>/dev/null)
  found=${found# }
  printf '%s' "${found% }"
}

# Job processes that outlived their phase (backgrounded, daemonized) must not write output after the result.
stop_leftovers() {
  local target pids
  target=$(readlink -f -- "$OUTPUT") || target=$OUTPUT
  pids=$(holders "$target")
  [ -n "$pids" ] || return 0
  log "stopping leftover job processes that still hold output.log: $pids"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null
  for _ in {1..25}; do
    sleep 0.2
    pids=$(holders "$target")
    [ -n "$pids" ] || return 0
  done
  log "killing leftover job processes: $pids"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
  for _ in {1..25}; do
    sleep 0.2
    pids=$(holders "$target")
    [ -n "$pids" ] || return 0
  done
  log "warning: processes still hold output.log: $pids"
}

# Step 6: the outcome, written once every job process is gone (output.log is complete).
write_result() {
  printf 'phase=%s\nexit_code=%s\nreason=%s\nfinished_at=%s\n' "$PHASE" "$CODE" "$REASON" "$EPOCHSECONDS" |
    put_file "$STATE/result" 644 || log "ERROR: could not write the result"
  log "result: phase=$PHASE exit_code=$CODE reason=$REASON"
}

# Step 7: the relay creates $STATE/relay/drained once the whole output is written to the logs table (not just
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

# Step 8: terminate through the EC2 API, else shut down (the instance's shutdown behaviour is terminate). Once.
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
  mkdir -p "$STATE/relay" && chmod 755 "$STATE" "$STATE/relay"
  identify_user
  give "$STATE/relay"  # the one place the relay (logged in as the job user) writes: its drained marker
  log "ec2jobs wrapper for job $JOB_ID on $INSTANCE_TYPE: max runtime ${MAX_RUNTIME}s, user $JOB_USER"
  if [ "$IS_ROOT" = 1 ] && [ "$USER_EXISTS" = 0 ]; then
    log "warning: user $JOB_USER does not exist; the job runs as root"
  fi
  if [ "$DEADLINE_RC" = 0 ]; then
    log "deadline scheduled: shutdown -h +$SHUTDOWN_MINUTES"
  else
    log "ERROR: scheduling the deadline shutdown failed (status $DEADLINE_RC)"
  fi
  install_reboot_guard
  install_ssh_keys
  write_inputs
  run_job
  stop_leftovers
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
