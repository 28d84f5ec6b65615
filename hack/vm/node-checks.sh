# shellcheck shell=bash
# The VM tier's node checks (sourced by guest-tests.sh): the node as users run it. hack/install.sh
# runs in the guest, systemd starts containerd, nodus-images and kubelet.service, and everything
# is then looked at from outside as an operator would: the kubelet's read-only API (`GET /pods`),
# containerd (`ctr -n k8s.io`), /proc and the cgroup files. crictl is not packaged in Debian 12.
#
# The checks build on each other in ALL_CHECKS' order (install, the example pods, then pods of
# hack/vm/manifests); node_reboot runs on the second boot (guest-tests.sh asks for the reboot).

MANIFESTS=/etc/kubernetes/manifests
KUBELET_RO=http://127.0.0.1:10255
KUBELET_HEALTHZ=http://127.0.0.1:10248/healthz
NODE_STATE=/var/lib/nodus-vm           # on the guest's disk: survives the reboot
REPO=${NODUS_VM_REPO:-/nodus}
# Static pods are named <name>-<node name> (the hostname).
NODE_NAME=$(hostname | tr '[:upper:]' '[:lower:]')
DEMO_PODS=(web ticker)
mkdir -p "$NODE_STATE"

# curl: Debian's static busybox wget segfaults (exit 139) on any URL.
kget() { curl -fsS -m 5 "$1" 2>/dev/null; }
pods_json() { kget "$KUBELET_RO/pods"; }
# pod_q POD JQ: a jq filter on the pod named POD-<node> in GET /pods (nothing if absent).
pod_q() {
  pods_json | jq -r --arg n "$1-$NODE_NAME" ".items[] | select(.metadata.name == \$n) | $2" 2>/dev/null
}
# cid POD CONTAINER: the container's ID (without containerd://).
cid() { pod_q "$1" ".status.containerStatuses[]? | select(.name == \"$2\") | .containerID // empty" | sed 's|^.*://||'; }
ctr_k() { timeout 30 ctr --namespace k8s.io "$@"; }
task_pid() { ctr_k tasks ls 2>/dev/null | awk -v c="$1" '$1 == c && $3 == "RUNNING" { print $2 }'; }
# The cgroup v2 directory of a process.
proc_cgroup() { echo "$CGROUP_ROOT$(sed -n 's/^0:://p' "/proc/$1/cgroup" 2>/dev/null)"; }
# Containers (sandboxes included) of a pod in containerd, by the CRI labels.
pod_ctr_ids() { ctr_k containers ls -q "labels.\"io.kubernetes.pod.name\"==$1-$NODE_NAME" 2>/dev/null; }
since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }'; }

# pods_running POD...: every pod Running with all its containers running (GET /pods).
pods_running() {
  local json p
  json=$(pods_json) || return 1
  for p in "$@"; do
    jq -e --arg n "$p-$NODE_NAME" '.items[] | select(.metadata.name == $n)
      | select(.status.phase == "Running")
      | select((.status.containerStatuses // []) | length > 0 and all(.state.running != null))' \
      <<< "$json" > /dev/null 2>&1 || return 1
  done
}
# wait_until SECONDS CMD...: polls CMD every 0.5 s; status of the last try.
wait_until() {
  local limit=$1 t0; shift
  t0=$(uptime_s)
  until "$@"; do
    awk -v a="$t0" -v b="$(uptime_s)" -v l="$limit" 'BEGIN { exit !(b - a > l) }' && return 1
    sleep 0.5
  done
}
# What GET /pods says of the pods (name, phase, containers with state and restarts), one line.
pods_summary() {
  pods_json | jq -r '[.items[] | "\(.metadata.name) \(.status.phase) [" +
    ([.status.containerStatuses[]? | "\(.name) \(.state | keys | join(",")) r\(.restartCount)"] | join("; ")) + "]"]
    | join(", ")' 2>/dev/null || echo "GET /pods did not answer"
}
healthz_ok() { [ "$(kget "$KUBELET_HEALTHZ")" = ok ]; }
unit_active() { [ "$(systemctl is-active "$1" 2>/dev/null)" = active ]; }
# Monotonic seconds at which a unit last became active.
unit_active_at() {
  awk -v u="$(systemctl show -p ActiveEnterTimestampMonotonic --value "$1" 2>/dev/null)" \
    'BEGIN { printf "%.1f", u / 1e6 }'
}
journal_tail() { journalctl -u "$1" -n "${2:-8}" --no-pager -o cat 2>&1 | tail -c 900 | tr '\n' ' '; }

# --- install -----------------------------------------------------------------------------------
# hack/install.sh as a user runs it (binaries straight from the cargo target dir on the repository
# share: install copies them to the guest's disk once, they never run from 9p), then once more to
# see that a re-run is a no-op.
check_node_install() {
  local t0 out rc units=() u
  t0=$(uptime_s)
  # The checks read GET /pods on the read-only port, which the shipped config leaves off as
  # upstream does: this test node turns it on as an operator would, in its config.yaml
  # (install.sh keeps an existing one).
  # Its cgroupDriver is systemd, as kubeadm writes it: install.sh then sets containerd's
  # SystemdCgroup to match.
  mkdir -p /var/lib/kubelet
  sed -e 's/^readOnlyPort: .*/readOnlyPort: 10255/' -e 's/^cgroupDriver: .*/cgroupDriver: systemd/' \
    "$REPO/hack/deploy/kubelet-config.yaml" >/var/lib/kubelet/config.yaml
  out=$(bash "$REPO/hack/install.sh" --no-build --bin-dir "$BIN_DIR" --demo 2>&1)
  rc=$?
  if [ "$rc" -ne 0 ]; then
    fail node_install "hack/install.sh exited $rc: $(echo "$out" | tail -c 600 | tr '\n' ' ')"
    return 0
  fi
  metric "install.sh" "$(since "$t0") s"
  for u in containerd nodus-images kubelet; do
    unit_active "$u" || units+=("$u: $(systemctl is-active "$u" 2>&1)")
  done
  if [ ${#units[@]} -gt 0 ]; then
    fail node_install "units not active after install: ${units[*]}; kubelet: $(journal_tail kubelet)"
    return 0
  fi
  if ! wait_until 60 healthz_ok; then
    fail node_install "kubelet.service active but /healthz on 10248 did not answer ok in 60 s: $(journal_tail kubelet)"
    return 0
  fi
  local images
  images=$(ctr_k images ls -q 2>/dev/null | grep -c '^localhost/nodus/')
  pass node_install "install.sh in $(since "$t0") s; containerd, nodus-images, kubelet active; healthz ok; $images localhost/nodus images; $(echo "$out" | tail -1)"
  # Idempotent: a second run succeeds and restarts nothing.
  local kub_pid
  kub_pid=$(systemctl show -p MainPID --value kubelet)
  out=$(bash "$REPO/hack/install.sh" --no-build --bin-dir "$BIN_DIR" --demo 2>&1)
  rc=$?
  if [ "$rc" -eq 0 ] && [ "$(systemctl show -p MainPID --value kubelet)" = "$kub_pid" ] &&
      [[ $out == *"restarted: containerd=0 images=0 kubelet=0"* ]] && [ -f /etc/containerd/config.toml.nodus-orig ] &&
      ! cmp -s /etc/containerd/config.toml.nodus-orig /etc/containerd/config.toml; then
    pass node_install_idempotent "second install.sh: exit 0, nothing restarted (kubelet PID $kub_pid kept), Debian's containerd config kept as config.toml.nodus-orig"
  else
    fail node_install_idempotent "second install.sh: exit $rc, kubelet PID $kub_pid -> $(systemctl show -p MainPID --value kubelet), output: $(echo "$out" | tail -c 400 | tr '\n' ' ')"
  fi
}

# --- the example's static pods -----------------------------------------------------------------
check_node_pods_running() {
  local started t_ready p c id missing=() ids=()
  started=$(unit_active_at kubelet)
  if ! wait_until 240 pods_running "${DEMO_PODS[@]}"; then
    fail node_pods_running "not all of ${DEMO_PODS[*]} Running within 240 s: $(pods_summary); kubelet: $(journal_tail kubelet 6)"
    return 0
  fi
  t_ready=$(uptime_s)
  metric "time to all pods Running" "$(awk -v a="$started" -v b="$t_ready" 'BEGIN { printf "%.1f", b - a }') s after kubelet.service started (${DEMO_PODS[*]})"
  # The same seen through CRI: each container's task RUNNING in containerd.
  for p in "${DEMO_PODS[@]}"; do
    for c in $(pod_q "$p" '.status.containerStatuses[].name'); do
      id=$(cid "$p" "$c")
      if [ -n "$id" ] && [ -n "$(task_pid "$id")" ]; then
        ids+=("$p/$c=${id:0:12}")
      else
        missing+=("$p/$c (${id:-no id})")
      fi
    done
  done
  if [ ${#missing[@]} -gt 0 ]; then
    fail node_pods_running "GET /pods says Running but containerd has no RUNNING task for: ${missing[*]}"
  else
    pass node_pods_running "$(awk -v a="$started" -v b="$t_ready" 'BEGIN { printf "%.1f", b - a }') s from kubelet start; GET /pods: $(pods_summary); ctr tasks RUNNING: ${ids[*]}"
  fi
}

# --- the systemd cgroup driver: pod slices, container scopes ---------------------------------
# sd_scope POD CONTAINER: "ok <scope path>" when the container's process sits in a systemd scope
# cri-containerd-<id>.scope in its pod's slice kubepods[-<qos>]-pod<uid>.slice, both active;
# else what is wrong.
sd_scope() {
  local pod=$1 c=$2 id pid cg uid slice scope qos
  id=$(cid "$pod" "$c")
  pid=$(task_pid "$id")
  [ -n "$pid" ] || { echo "no running task for $pod/$c"; return; }
  cg=$(sed -n 's/^0:://p' "/proc/$pid/cgroup")
  uid=$(pod_q "$pod" .metadata.uid | tr - _)
  qos=$(pod_q "$pod" .status.qosClass | tr '[:upper:]' '[:lower:]')
  slice=/kubepods.slice
  [ "$qos" = guaranteed ] || slice=$slice/kubepods-$qos.slice
  slice=$slice/$(basename "$slice" .slice)-pod$uid.slice
  scope=$slice/cri-containerd-$id.scope
  if [ "$cg" != "$scope" ]; then
    echo "$pod/$c in '$cg', expected '$scope'"
  elif [ "$(systemctl is-active "$(basename "$slice")")" != active ] ||
       [ "$(systemctl is-active "$(basename "$scope")")" != active ]; then
    echo "$pod/$c: slice $(systemctl is-active "$(basename "$slice")"), scope $(systemctl is-active "$(basename "$scope")")"
  else
    echo "ok $scope"
  fi
}
# sd_pods_gone CGROUP_PATH...: sd-shim and sd-nodus gone from GET /pods, and each path's unit
# inactive and directory gone.
sd_pods_gone() {
  local path
  [ -z "$(pod_q sd-shim .metadata.name)$(pod_q sd-nodus .metadata.name)" ] || return 1
  for path in "$@"; do
    [ "$(systemctl is-active "$(basename "$path")" 2>/dev/null)" != active ] || return 1
    [ ! -d "$CGROUP_ROOT$path" ] || return 1
  done
}
check_node_systemd_cgroups() {
  local r out=() bad=() p paths=() quota
  # The example pod on runc (SystemdCgroup = true), then a pod on our shim v2 and one on
  # containerd's runc shim driving nodus-runtime.
  cp "$REPO/hack/vm/manifests/sd-shim.yaml" "$REPO/hack/vm/manifests/sd-runc-shim.yaml" "$MANIFESTS/"
  if ! wait_until 120 pods_running sd-shim sd-nodus; then
    fail node_systemd_cgroups "sd-shim, sd-nodus not Running within 120 s: $(pods_summary); kubelet: $(journal_tail kubelet 6)"
    rm -f "$MANIFESTS/sd-shim.yaml" "$MANIFESTS/sd-runc-shim.yaml"
    return 0
  fi
  for p in web/httpd sd-shim/main sd-nodus/main; do
    r=$(sd_scope "${p%/*}" "${p#*/}")
    if [[ $r == ok* ]]; then
      out+=("$p ${r#ok }")
      [ "${p%/*}" = web ] || paths+=("$(dirname "${r#ok }")" "${r#ok }")
    else
      bad+=("$r")
    fi
  done
  # limits.cpu 100m is 10% of a CPU: systemd shows the slice's quota as 100ms per second.
  quota=$(systemctl show -p CPUQuotaPerSecUSec --value "$(basename "${paths[0]:-none}")" 2>/dev/null)
  if [ ${#bad[@]} -gt 0 ]; then
    fail node_systemd_cgroups "${bad[*]}"
  elif [ "$quota" != 100ms ]; then
    fail node_systemd_cgroups "sd-shim's slice ${paths[0]:-?}: CPUQuotaPerSecUSec '$quota', expected 100ms (limits.cpu 100m)"
  else
    pass node_systemd_cgroups "${out[*]}; sd-shim's slice CPUQuotaPerSecUSec=$quota"
  fi
  rm -f "$MANIFESTS/sd-shim.yaml" "$MANIFESTS/sd-runc-shim.yaml"
  # sd-nodus is Burstable: its arrival and removal resize kubepods-burstable.slice, which
  # exists already, through SetUnitProperties; none of the QoS updates may fail.
  local qos_failed
  if wait_until 90 sd_pods_gone "${paths[@]}"; then
    sleep 3   # the next QoS update (every housekeeping, 2 s)
    qos_failed=$(journalctl -u kubelet --no-pager -o cat 2>/dev/null | grep -c "cannot update the QoS cgroups")
  fi
  if [ "${qos_failed:-x}" != 0 ] && [ -n "${qos_failed:-}" ]; then
    fail node_systemd_cgroups_removed "sd-shim, sd-nodus removed, but the kubelet logged $qos_failed failed QoS slice updates: $(journalctl -u kubelet --no-pager -o cat | grep -m1 'cannot update the QoS cgroups' | tail -c 300)"
  elif [ -n "${qos_failed:-}" ]; then
    pass node_systemd_cgroups_removed "sd-shim, sd-nodus removed: their slices and scopes inactive, directories gone (${paths[*]}); kubepods-burstable.slice CPUWeight now $(systemctl show -p CPUWeight --value kubepods-burstable.slice), no failed QoS update"
  else
    local left=()
    for p in "${paths[@]}"; do
      left+=("$(basename "$p") $(systemctl is-active "$(basename "$p")" 2>/dev/null)$([ -d "$CGROUP_ROOT$p" ] && echo ' (directory left)')")
    done
    fail node_systemd_cgroups_removed "90 s after their manifests went: ${left[*]}; pods: $(pods_summary)"
  fi
}

# --- pod network: the two example pods ping each other over nodus-bridge ---------------------
# ping_from POD CONTAINER IP: "received/sent avg-rtt" of 3 pings, run in the container (ctr exec).
ping_from() {
  local id out
  id=$(cid "$1" "$2")
  out=$(ctr_k tasks exec --exec-id "ping-$$-$RANDOM" "$id" ping -c 3 -W 3 "$3" 2>&1)
  echo "$out" | awk '/packets transmitted/ { s = $1; r = $4 } /round-trip|rtt/ { split($4, a, "/"); avg = a[2] }
    END { printf "%s/%s avg %s ms", r + 0, s + 0, avg }'
}
check_node_pod_network() {
  local ip_web ip_tick a b bridge
  ip_web=$(pod_q web '.status.podIP // empty')
  ip_tick=$(pod_q ticker '.status.podIP // empty')
  if [ -z "$ip_web" ] || [ -z "$ip_tick" ]; then
    fail node_pod_network "pod IPs missing in GET /pods: web '$ip_web', ticker '$ip_tick'"
    return 0
  fi
  a=$(ping_from ticker tick "$ip_web")
  b=$(ping_from web httpd "$ip_tick")
  bridge=$(ip -br addr show cni0 2>/dev/null | awk '{ print $1, $3 }')
  if [[ $a == 3/3* ]] && [[ $b == 3/3* ]]; then
    pass node_pod_network "ticker $ip_tick -> web $ip_web: $a; web -> ticker: $b; bridge ${bridge:-none}"
  else
    fail node_pod_network "ticker $ip_tick -> web $ip_web: $a; web -> ticker: $b; bridge ${bridge:-none}"
  fi
}

# --- the container's rootfs is an overlay mount ------------------------------------------------
check_node_overlay_rootfs() {
  local id pid line
  id=$(cid web httpd)
  pid=$(task_pid "$id")
  if [ -z "$pid" ]; then
    fail node_overlay_rootfs "web/httpd has no running task (container '${id:-none}')"
    return 0
  fi
  # mountinfo: field 5 is the mount point; after " - ": fstype, source, options.
  line=$(awk '$5 == "/" { sub(/.* - /, ""); print; exit }' "/proc/$pid/mountinfo")
  if [ "${line%% *}" = overlay ]; then
    pass node_overlay_rootfs "web/httpd (pid $pid) / is overlay, $(echo "$line" | grep -o 'upperdir=[^,]*')"
  else
    fail node_overlay_rootfs "web/httpd (pid $pid) / is '$line', expected overlay"
  fi
}

# --- cpu limit: 200m -> cpu.max 20000 100000, the busy loop throttled ------------------------
check_node_cpu_limit() {
  cp "$REPO/hack/vm/manifests/cpu-hog.yaml" "$MANIFESTS/"
  if ! wait_until 120 pods_running cpu-hog; then
    fail node_cpu_max "cpu-hog not Running within 120 s: $(pods_summary)"
    fail node_cpu_throttled "cpu-hog not Running"
    return 0
  fi
  local id pid cg cpumax thr0 thr1 use0 use1 t0 t1 ratio
  id=$(cid cpu-hog spin)
  pid=$(task_pid "$id")
  cg=$(proc_cgroup "$pid")
  cpumax=$(cat "$cg/cpu.max" 2>/dev/null)
  if [ "$cpumax" = "20000 100000" ]; then
    pass node_cpu_max "cpu.max = '$cpumax' in ${cg#"$CGROUP_ROOT"}"
  else
    fail node_cpu_max "cpu.max = '$cpumax' in ${cg#"$CGROUP_ROOT"} (limits.cpu 200m), expected '20000 100000'; CRI spec: linux.resources.cpu $(ctr_k containers info "$id" 2>/dev/null | jq -c '.Spec.linux.resources.cpu // null')"
  fi
  stat_key() { awk -v k="$1" '$1 == k { print $2 }' "$cg/cpu.stat" 2>/dev/null; }
  thr0=$(stat_key nr_throttled); use0=$(stat_key usage_usec); t0=$(uptime_s)
  sleep 3
  thr1=$(stat_key nr_throttled); use1=$(stat_key usage_usec); t1=$(uptime_s)
  ratio=$(awk -v u0="${use0:-0}" -v u1="${use1:-0}" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (u1 - u0) / 1e6 / (b - a) }')
  metric "cpu-hog CPU use" "$ratio CPU (limit 0.20)"
  if [ "${thr1:-0}" -gt 0 ] && [ "${thr1:-0}" -gt "${thr0:-0}" ] && awk -v r="$ratio" 'BEGIN { exit !(r > 0.05 && r < 0.4) }'; then
    pass node_cpu_throttled "nr_throttled $thr0 -> $thr1 in 3 s, busy loop used $ratio CPU (limit 0.20)"
  else
    fail node_cpu_throttled "nr_throttled '$thr0' -> '$thr1' in 3 s, busy loop used $ratio CPU (limit 0.20)"
  fi
}

# --- memory limit: the hog is OOM-killed and restarted ------------------------------------------
oom_seen() {
  [ "$(pod_q mem-hog '.status.containerStatuses[0] | "\(.restartCount >= 1) \(.lastState.terminated.reason // "")"')" = "true OOMKilled" ]
}
check_node_memory_oom() {
  cp "$REPO/hack/vm/manifests/mem-hog.yaml" "$MANIFESTS/"
  local st id limit
  if wait_until 120 oom_seen; then
    st=$(pod_q mem-hog '.status.containerStatuses[0] | "restartCount \(.restartCount), lastState.terminated \(.lastState.terminated.reason) exit \(.lastState.terminated.exitCode)"')
    id=$(cid mem-hog hog)
    limit=$(ctr_k containers info "$id" 2>/dev/null | jq -r '.Spec.linux.resources.memory.limit // "none"')
    pass node_memory_oom "limits.memory 32Mi -> memory limit $limit; $st"
  else
    st=$(pod_q mem-hog '.status.containerStatuses[0] | "restartCount \(.restartCount), state \(.state | keys | join(",")), lastState \(.lastState.terminated.reason // "none") exit \(.lastState.terminated.exitCode // "none")"')
    id=$(cid mem-hog hog)
    limit=$(ctr_k containers info "$id" 2>/dev/null | jq -r '.Spec.linux.resources.memory.limit // "none"')
    fail node_memory_oom "no OOMKilled restart within 120 s (limits.memory 32Mi): ${st:-pod not in GET /pods}; CRI memory limit $limit"
  fi
}

# --- removing a manifest removes the pod -------------------------------------------------------
# hogs_removed [CGROUP_DIR...]: cpu-hog and mem-hog gone from GET /pods and containerd, the
# cgroup directories gone.
hogs_removed() {
  local q d
  for q in cpu-hog mem-hog; do
    [ -z "$(pod_q "$q" .metadata.name)" ] || return 1
    [ -z "$(pod_ctr_ids "$q")" ] || return 1
  done
  for d in "$@"; do [ ! -d "$d" ] || return 1; done
}
check_node_manifest_removed() {
  local p before=() pod_cg=() gone
  for p in cpu-hog mem-hog; do
    before+=("$p:$(pod_ctr_ids "$p" | wc -l)")
    # The pod's cgroup (parent of its containers' cgroups).
    local id pid
    id=$(cid "$p" "$( [ $p = cpu-hog ] && echo spin || echo hog)")
    pid=$(task_pid "$id")
    [ -n "$pid" ] && pod_cg+=("$(dirname "$(proc_cgroup "$pid")")")
  done
  rm -f "$MANIFESTS/cpu-hog.yaml" "$MANIFESTS/mem-hog.yaml"
  local t0; t0=$(uptime_s)
  if wait_until 90 hogs_removed "${pod_cg[@]}"; then
    gone=$(since "$t0")
    pass node_manifest_removed "cpu-hog, mem-hog gone $gone s after their manifests: not in GET /pods, no containerd containers (sandbox included; before ${before[*]}), pod cgroups ${pod_cg[*]#"$CGROUP_ROOT"} removed"
  else
    local left=()
    for p in cpu-hog mem-hog; do
      left+=("$p: in /pods '$(pod_q "$p" .status.phase)', containers $(pod_ctr_ids "$p" | wc -l)")
    done
    for d in "${pod_cg[@]}"; do [ -d "$d" ] && left+=("cgroup ${d#"$CGROUP_ROOT"}"); done
    fail node_manifest_removed "90 s after the manifests went: ${left[*]}"
  fi
}

# --- systemctl restart kubelet restarts no container -------------------------------------------
# container_snapshot: "pod/container id restarts" per container, sorted, and the task PIDs.
container_snapshot() {
  pods_json | jq -r '.items[] | .metadata.name as $p | .status.containerStatuses[]? |
    "\($p)/\(.name) \(.containerID | sub("^.*://"; "")) r\(.restartCount)"' 2>/dev/null | sort
}
check_node_kubelet_restart() {
  local before after pids0 pids1 t0 back
  before=$(container_snapshot)
  pids0=$(ctr_k tasks ls 2>/dev/null | tail -n +2 | sort)
  if [ -z "$before" ]; then
    fail node_kubelet_restart "no containers in GET /pods before the restart"
    return 0
  fi
  t0=$(uptime_s)
  systemctl restart kubelet
  if ! wait_until 60 healthz_ok; then
    fail node_kubelet_restart "kubelet not healthy 60 s after systemctl restart: $(journal_tail kubelet)"
    return 0
  fi
  wait_until 60 pods_running "${DEMO_PODS[@]}"
  back=$(since "$t0")
  # Give the restarted kubelet a few sync rounds to (wrongly) act on the pods.
  sleep 10
  after=$(container_snapshot)
  pids1=$(ctr_k tasks ls 2>/dev/null | tail -n +2 | sort)
  if [ "$before" = "$after" ] && [ "$pids0" = "$pids1" ]; then
    pass node_kubelet_restart "$(echo "$before" | wc -l) containers, same IDs and restart counts and task PIDs 10 s after the kubelet was back ($back s): $(echo "$after" | awk '{ printf "%s%s=%s %s", (NR > 1 ? ", " : ""), $1, substr($2, 1, 12), $3 }')"
  else
    fail node_kubelet_restart "containers changed across systemctl restart kubelet: before [$(echo "$before" | paste -sd';')] after [$(echo "$after" | paste -sd';')]; tasks before [$(echo "$pids0" | paste -sd';')] after [$(echo "$pids1" | paste -sd';')]"
  fi
}

# --- reboot: the pods come back ----------------------------------------------------------------
# Boot 1: remember the containers and ask guest-run.sh for a reboot.
prepare_node_reboot() {
  container_snapshot > "$NODE_STATE/containers-before-reboot"
  sync
  note "node_reboot: $(wc -l < "$NODE_STATE/containers-before-reboot") containers recorded; asking for a reboot"
  touch "$RESULTS/reboot-request"
}
# Boot 2: systemd brings containerd and the kubelet up, the kubelet brings the pods back.
check_node_reboot() {
  local t_ready before after
  before=$(cat "$NODE_STATE/containers-before-reboot" 2>/dev/null)
  if ! wait_until 300 pods_running "${DEMO_PODS[@]}"; then
    fail node_reboot "after the reboot, not all of ${DEMO_PODS[*]} Running within 300 s: $(pods_summary); containerd $(systemctl is-active containerd), kubelet $(systemctl is-active kubelet): $(journal_tail kubelet 6)"
    return 0
  fi
  t_ready=$(uptime_s)
  metric "reboot: pods Running" "$t_ready s after the kernel started (kubelet.service active at $(unit_active_at kubelet) s)"
  after=$(container_snapshot)
  local stale=() line
  while read -r line; do
    [ -n "$line" ] && grep -qF "${line#* }" <<< "$before" && stale+=("${line%% *}")
  done <<< "$(awk '{ print $1, $2 }' <<< "$after")"
  if [ -z "$before" ]; then
    fail node_reboot "no containers were recorded before the reboot"
  elif [ ${#stale[@]} -gt 0 ]; then
    fail node_reboot "containers from before the reboot reported as running: ${stale[*]}"
  elif [ -n "$(pod_q cpu-hog .metadata.name)$(pod_q mem-hog .metadata.name)" ]; then
    fail node_reboot "pods whose manifests were removed came back: $(pods_summary)"
  else
    # The pod network after the reboot (bridge made again, IPAM state from before on disk).
    local ip_web ping
    ip_web=$(pod_q web '.status.podIP // empty')
    ping=$(ping_from ticker tick "${ip_web:-none}")
    if [[ $ping == 3/3* ]]; then
      pass node_reboot "${DEMO_PODS[*]} Running again at $t_ready s of uptime (new containers: $(echo "$after" | awk '{ printf "%s%s=%s %s", (NR > 1 ? ", " : ""), $1, substr($2, 1, 12), $3 }')); ticker -> web $ip_web: $ping"
    else
      fail node_reboot "${DEMO_PODS[*]} Running again, but ticker -> web '$ip_web': $ping"
    fi
  fi
}

# --- uninstall ----------------------------------------------------------------------------------
check_node_uninstall() {
  local out rc left=() f
  out=$(bash "$REPO/hack/uninstall.sh" 2>&1)
  rc=$?
  for f in /usr/local/bin/kubelet /usr/local/bin/nodus-runtime /usr/local/bin/containerd-shim-nodus-v2 \
      /opt/cni/bin/nodus-bridge /etc/cni/net.d/10-nodus.conflist /etc/systemd/system/kubelet.service \
      /etc/systemd/system/nodus-images.service /etc/systemd/system/kubelet.service.d /var/lib/kubelet/config.yaml \
      /usr/local/share/nodus /etc/containerd/config.toml.nodus-orig "$MANIFESTS/demo.yaml"; do
    [ -e "$f" ] && left+=("$f")
  done
  local containers; containers=$(ctr_k containers ls -q 2>/dev/null | wc -l)
  if [ "$rc" -eq 0 ] && [ ${#left[@]} -eq 0 ] && ! unit_active kubelet && unit_active containerd &&
      [ "$containers" -eq 0 ] && ! grep -q nodus /etc/containerd/config.toml 2>/dev/null; then
    pass node_uninstall "uninstall.sh: example pods stopped (0 containers left), files removed, kubelet $(systemctl is-active kubelet), containerd active with Debian's config back"
  else
    fail node_uninstall "uninstall.sh exit $rc; left: ${left[*]:-none}; containers $containers; kubelet $(systemctl is-active kubelet); containerd $(systemctl is-active containerd); output: $(echo "$out" | tail -c 300 | tr '\n' ' ')"
  fi
}

# --- kubeadm join, as an operator joins a node ---------------------------------------------------
# A control plane on this machine, prepared as `kubeadm init` would with its phases (certs,
# kubeconfigs, the kubeadm-config and kubelet-config ConfigMaps, a bootstrap token, cluster-info),
# from binaries built out of Debian's Kubernetes source on the host (hack/vm-test.sh builds them):
# Debian's etcd, kube-apiserver, kube-controller-manager (CSR approver and signer, bootstrap
# signer) and kube-scheduler, each a transient unit, and the control-plane node as an object only.
# Then the operator's path:
# `hack/install.sh --join <kubeadm join arguments>`; the node must be Ready, and a pod the scheduler
# puts on it must run in a systemd scope of its pod's slice.
KUBE_BUILD=$REPO/build/kube-apiserver
JOIN_TOKEN=nodus1.0123456789abcdef
# kubeadm wants the API server on a non-loopback address of the default route's interface: this
# VM has no network, so the check gives it a dummy interface and a default route over it.
CP_IP=10.99.0.1
kube() { timeout 60 "$WORK/kube/kubectl" --kubeconfig /etc/kubernetes/admin.conf "$@"; }
apiserver_ready() { [ "$(kube get --raw /readyz 2>/dev/null)" = ok ]; }
node_ready() {
  [ "$(kube get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
cluster_info_signed() {
  kube -n kube-public get configmap cluster-info -o jsonpath='{.data}' 2>/dev/null | grep -q "jws-kubeconfig-${JOIN_TOKEN%%.*}"
}
joined_pod_running() { [ "$(kube get pod joined -o jsonpath='{.status.phase}' 2>/dev/null)" = Running ]; }
joined_pod_gone() { ! kube get pod joined > /dev/null 2>&1 && [ -z "$(ctr_k containers ls -q 2>/dev/null)" ]; }
check_node_kubeadm_join() {
  local k=$WORK/kube b out rc t0 unit
  mkdir -p "$k"
  for b in "$KUBE_BUILD/kube-apiserver" "$KUBE_BUILD"/bin/{kube-controller-manager,kube-scheduler,kubeadm} \
      "$REPO/build/kubectl/kubectl"; do
    if [ ! -x "$b" ]; then
      fail node_kubeadm_join "$b missing: hack/vm-test.sh builds it (hack/kube-build.sh, hack/kubectl.sh)"
      return 0
    fi
    cp "$b" "$k/"
  done
  if ! ip -4 addr show | grep -q "inet $CP_IP/"; then
    ip link add nodus-vm0 type dummy && ip addr add "$CP_IP/24" dev nodus-vm0 && ip link set nodus-vm0 up &&
      { ip route show default | grep -q . || ip route add default via 10.99.0.254 dev nodus-vm0 onlink; } ||
      { fail node_kubeadm_join "cannot give the VM an address for the API server"; return 0; }
  fi
  cat > "$k/kubeadm.yaml" <<YAML
apiVersion: kubeadm.k8s.io/v1beta2
kind: InitConfiguration
localAPIEndpoint: {advertiseAddress: $CP_IP, bindPort: 6443}
bootstrapTokens: [{token: $JOIN_TOKEN, ttl: 1h}]
nodeRegistration: {name: nodus-cp, criSocket: /run/containerd/containerd.sock}
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
kubernetesVersion: v1.20.2
controlPlaneEndpoint: $CP_IP:6443
etcd: {external: {endpoints: [http://127.0.0.1:2379]}}
networking: {serviceSubnet: 10.96.0.0/16, podSubnet: 10.244.0.0/16}
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
# This VM's small disk: no disk-pressure eviction.
evictionHard: {memory.available: 100Mi, nodefs.available: 0%, imagefs.available: 0%}
YAML
  t0=$(uptime_s)
  out=$( { "$k/kubeadm" init phase certs all --config "$k/kubeadm.yaml" &&
    for c in admin controller-manager scheduler; do
      "$k/kubeadm" init phase kubeconfig "$c" --config "$k/kubeadm.yaml" || exit 1
    done; } 2>&1)
  if [ $? -ne 0 ]; then
    fail node_kubeadm_join "kubeadm init phase certs/kubeconfig: $(echo "$out" | tail -c 400 | tr '\n' ' ')"
    return 0
  fi
  systemctl start etcd
  local p=/etc/kubernetes/pki
  systemd-run --quiet --unit=nodus-vm-apiserver "$k/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --secure-port=6443 --insecure-port=0 --advertise-address=$CP_IP --client-ca-file=$p/ca.crt --tls-cert-file=$p/apiserver.crt \
    --tls-private-key-file=$p/apiserver.key --kubelet-client-certificate=$p/apiserver-kubelet-client.crt \
    --kubelet-client-key=$p/apiserver-kubelet-client.key --enable-bootstrap-token-auth=true \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-cluster-ip-range=10.96.0.0/16 --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file=$p/sa.pub --service-account-signing-key-file=$p/sa.key \
    --allow-privileged=true --profiling=false
  if ! wait_until 180 apiserver_ready; then
    fail node_kubeadm_join "kube-apiserver not ready in 180 s: $(journal_tail nodus-vm-apiserver 8)"
    return 0
  fi
  metric "kubeadm join: control plane ready" "$(since "$t0") s after the certificates"
  systemd-run --quiet --unit=nodus-vm-controller-manager "$k/kube-controller-manager" \
    --kubeconfig=/etc/kubernetes/controller-manager.conf --leader-elect=false --port=0 --secure-port=0 \
    --controllers=csrapproving,csrsigning,csrcleaner,bootstrapsigner,tokencleaner,serviceaccount,nodelifecycle \
    --cluster-signing-cert-file=$p/ca.crt --cluster-signing-key-file=$p/ca.key \
    --use-service-account-credentials=true --service-account-private-key-file=$p/sa.key \
    --root-ca-file=$p/ca.crt
  systemd-run --quiet --unit=nodus-vm-scheduler "$k/kube-scheduler" \
    --kubeconfig=/etc/kubernetes/scheduler.conf --leader-elect=false --port=0
  # The control-plane node kubeadm init would have registered (its kubelet is not part of the
  # test): upload-config annotates it (once it has its hostname label). Tainted as kubeadm marks
  # it, so nothing is scheduled there.
  kube apply -f - > /dev/null <<YAML
apiVersion: v1
kind: Node
metadata: {name: nodus-cp, labels: {kubernetes.io/hostname: nodus-cp, node-role.kubernetes.io/master: ""}}
spec: {taints: [{key: node-role.kubernetes.io/master, effect: NoSchedule}]}
YAML
  out=$( { "$k/kubeadm" init phase upload-config all --config "$k/kubeadm.yaml" &&
    "$k/kubeadm" init phase bootstrap-token --config "$k/kubeadm.yaml"; } 2>&1)
  if [ $? -ne 0 ]; then
    fail node_kubeadm_join "kubeadm init phase upload-config/bootstrap-token: $(echo "$out" | tail -c 400 | tr '\n' ' ')"
    return 0
  fi
  # kubeadm join's discovery checks the token's JWS signature of cluster-info, which the
  # controller manager's bootstrap signer adds.
  if ! wait_until 120 cluster_info_signed; then
    fail node_kubeadm_join "cluster-info not signed for token ${JOIN_TOKEN%%.*} in 120 s; controller manager $(systemctl is-active nodus-vm-controller-manager): $(journal_tail nodus-vm-controller-manager 8)"
    return 0
  fi
  # The operator's part. Preflight errors let through: crictl (FileExisting-crictl, CRI), which
  # Debian 12 does not package; the control plane's CA on this same machine
  # (FileAvailable--etc-kubernetes-pki-ca.crt); the version skew (KubeletVersion: our kubelet
  # reports v1.34, kubeadm 1.20 wants one no newer than the control plane).
  sysctl -qw net.ipv4.ip_forward=1
  t0=$(uptime_s)
  out=$(PATH=$k:$PATH bash "$REPO/hack/install.sh" --no-build --bin-dir "$BIN_DIR" --join "$CP_IP:6443" \
    --token "$JOIN_TOKEN" --discovery-token-unsafe-skip-ca-verification \
    --cri-socket /run/containerd/containerd.sock --ignore-preflight-errors=FileExisting-crictl,CRI,FileAvailable--etc-kubernetes-pki-ca.crt,KubeletVersion 2>&1)
  rc=$?
  echo "$out" | tail -n 25
  if [ "$rc" -ne 0 ]; then
    fail node_kubeadm_join "hack/install.sh --join exited $rc: $(echo "$out" | tail -c 700 | tr '\n' ' '); kubelet: $(journal_tail kubelet 6)"
    return 0
  fi
  metric "kubeadm join" "$(since "$t0") s (install.sh --join)"
  if ! wait_until 120 node_ready; then
    fail node_kubeadm_join "joined, but node $NODE_NAME not Ready in 120 s: $(kube get node -o wide 2>&1 | tail -n +2 | tr -s ' ' | tr '\n' ' '); kubelet: $(journal_tail kubelet 6)"
    return 0
  fi
  pass node_kubeadm_join "install.sh --join (kubeadm join $CP_IP:6443 --token ...) in $(since "$t0") s: node $NODE_NAME Ready; $(readlink /var/lib/kubelet/pki/kubelet-client-current.pem); kubeadm-flags.env: $(cut -c1-120 /var/lib/kubelet/kubeadm-flags.env)"
  kube apply -f - > /dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: joined, namespace: default}
spec:
  terminationGracePeriodSeconds: 2
  automountServiceAccountToken: false
  containers:
  - {name: main, image: localhost/nodus/busybox:1.35, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}
YAML
  if ! wait_until 120 joined_pod_running; then
    fail node_kubeadm_join_pod "pod 'joined' not Running in 120 s: $(kube get pod joined -o wide 2>&1 | tail -n +2); events: $(kube get events --field-selector involvedObject.name=joined -o jsonpath='{range .items[*]}{.reason}: {.message}; {end}' 2>&1 | tail -c 400)"
  else
    local node id pid cg uid
    node=$(kube get pod joined -o jsonpath='{.spec.nodeName}')
    id=$(kube get pod joined -o jsonpath='{.status.containerStatuses[0].containerID}' | sed 's|^.*://||')
    uid=$(kube get pod joined -o jsonpath='{.metadata.uid}' | tr - _)
    pid=$(task_pid "$id")
    cg=$(sed -n 's/^0:://p' "/proc/${pid:-0}/cgroup" 2>/dev/null)
    unit=kubepods-besteffort-pod$uid.slice
    if [ "$node" = "$NODE_NAME" ] &&
        [ "$cg" = "/kubepods.slice/kubepods-besteffort.slice/$unit/cri-containerd-$id.scope" ] &&
        [ "$(systemctl is-active "$unit")" = active ]; then
      pass node_kubeadm_join_pod "pod 'joined' scheduled to $node and Running, its container in $cg"
    else
      fail node_kubeadm_join_pod "pod 'joined' on '$node', container ${id:0:12} pid ${pid:-?} in '$cg' (slice $unit $(systemctl is-active "$unit"))"
    fi
  fi
  kube delete pod joined --wait=false > /dev/null 2>&1
  wait_until 60 joined_pod_gone || note "kubeadm join: pod 'joined' still there 60 s after its deletion"
  for unit in nodus-vm-scheduler nodus-vm-controller-manager nodus-vm-apiserver etcd; do
    systemctl stop "$unit" 2>/dev/null
  done
}
