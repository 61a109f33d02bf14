#!/usr/bin/env bash
# Build the rstwatch image without a container registry, and optionally run it the way Kubernetes
# would. This is how deploy/Containerfile was checked on a machine with no Docker engine and no
# registry access (deploy/README.md, "Container image"):
#
#   deploy/build-image-local.sh          build localhost/rstwatch:local
#   deploy/build-image-local.sh --run    ... then run it with runc: uid 65534, capabilities
#                                        BPF+PERFMON+DAC_READ_SEARCH only (bounding/permitted/effective,
#                                        no ambient, as containerd sets them), no_new_privs, read-only
#                                        root, tracefs bind-mounted read-only, its own network namespace;
#                                        checks /healthz and /metrics, then stops it.
#
# 1. builds the binary on the host with the builder stage's command (static glibc, crt-static);
# 2. sets the file capabilities the builder stage sets;
# 3. builds deploy/Containerfile's `prebuilt` target around it (the builder stage, whose base image
#    needs a registry, is not used by that target and is skipped).
# Needs root, Debian 12, the toolchain of `cargo xtask setup`; installs buildah/runc if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
run_it=false
[ "${1:-}" = "--run" ] && run_it=true

need() { command -v "$1" >/dev/null || { echo "installing $2 (apt-get)"; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2"; }; }
need buildah buildah
need setcap libcap2-bin
$run_it && need runc runc

target="$(uname -m)-unknown-linux-gnu"
export "CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUSTFLAGS=-C target-feature=+crt-static"
PATH="$HOME/.cargo/bin:$PATH" cargo build --release --locked -p rstwatch --target "$target" --target-dir target/image
bin="target/image/$target/release/rstwatch"
if readelf -l "$bin" | grep -q 'program interpreter'; then echo "$bin is not static" >&2; exit 1; fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/rstwatch"
setcap cap_bpf,cap_perfmon,cap_dac_read_search=ep "$ctx/rstwatch"
buildah build --quiet --target prebuilt -f deploy/Containerfile -t localhost/rstwatch:local "$ctx" >/dev/null
echo "built localhost/rstwatch:local"
buildah inspect --type image --format 'user {{.OCIv1.Config.User}}, entrypoint {{.OCIv1.Config.Entrypoint}}, cmd {{.OCIv1.Config.Cmd}}{{"\n"}}' localhost/rstwatch:local
c=$(buildah from localhost/rstwatch:local)
m=$(buildah mount "$c")
cleanup_container() { buildah umount "$c" >/dev/null 2>&1 || true; buildah rm "$c" >/dev/null 2>&1 || true; }
trap 'cleanup_container; rm -rf "$ctx"' EXIT
echo "image contents:"; (cd "$m" && ls -la)
getcap "$m/rstwatch"
$run_it || exit 0

[ -d /sys/kernel/tracing/events ] || mount -t tracefs tracefs /sys/kernel/tracing
ns="rstwatch-image-$$"
bundle="$ctx/bundle"
mkdir -p "$bundle"
ip netns add "$ns"
ip -n "$ns" link set lo up
trap 'runc delete -f "$ns" >/dev/null 2>&1 || true; ip netns del "$ns" 2>/dev/null || true; cleanup_container; rm -rf "$ctx"' EXIT
(cd "$bundle" && runc spec)
python3 - "$bundle/config.json" "$m" "$ns" <<'EOF'
import json, sys
path, rootfs, ns = sys.argv[1:]
d = json.load(open(path))
d["root"] = {"path": rootfs, "readonly": True}
p = d["process"]
p["terminal"] = False
p["user"] = {"uid": 65534, "gid": 65534}
p["args"] = ["/rstwatch", "run", "--metrics-addr", "0.0.0.0:9977"]
caps = ["CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH"]
# What containerd's CRI puts in the spec for securityContext.capabilities.add: no ambient set.
p["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
p["noNewPrivileges"] = True  # allowPrivilegeEscalation: false
d["mounts"].append({"destination": "/sys/kernel/tracing", "type": "bind",
                    "source": "/sys/kernel/tracing", "options": ["rbind", "ro"]})
d["linux"]["namespaces"] = [n if n["type"] != "network" else {"type": "network", "path": f"/run/netns/{ns}"}
                            for n in d["linux"]["namespaces"]]
json.dump(d, open(path, "w"), indent=1)
EOF
(cd "$bundle" && runc run --detach "$ns" >"$ctx/runc.log" 2>&1) || true
ok=false
for _ in $(seq 1 50); do
  if ip netns exec "$ns" curl -sf http://127.0.0.1:9977/healthz >/dev/null 2>&1; then ok=true; break; fi
  runc state "$ns" 2>/dev/null | grep -q '"status": "running"' || break
  sleep 0.2
done
pid=$(runc state "$ns" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])' 2>/dev/null || echo 0)
if $ok; then
  grep -E '^(Uid|CapPrm|CapEff|CapAmb|NoNewPrivs)' "/proc/$pid/status"
  ip netns exec "$ns" curl -s http://127.0.0.1:9977/metrics | grep -E '^rstwatch_(probe_attached|build_info)'
  echo "the image runs as the DaemonSet runs it"
else
  echo "the container did not become ready:"; cat "$ctx/runc.log"
fi
runc kill "$ns" TERM >/dev/null 2>&1 || true
for _ in $(seq 1 50); do runc state "$ns" 2>/dev/null | grep -q '"status": "stopped"' && break; sleep 0.1; done
$ok
