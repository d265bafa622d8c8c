#!/bin/sh
# An ssh stand-in for mpirun's rsh launcher (--mca plm_rsh_agent): runs the
# remote command in the network namespace that owns the host's address.
# LARS_NETNS_HOSTS maps addresses to namespaces: "10.213.7.1=lca1,10.213.7.2=lcb1".
host=$1
shift
ns=$(echo "$LARS_NETNS_HOSTS" | tr ',' '\n' | sed -n "s/^$host=//p")
if [ -z "$ns" ]; then
  echo "netns_rsh: no namespace for host '$host' in LARS_NETNS_HOSTS" >&2
  exit 255
fi
[ -n "$LARS_NETNS_RSH_LOG" ] && echo "$host $ns" >> "$LARS_NETNS_RSH_LOG"
exec ip netns exec "$ns" sh -c "$*"
