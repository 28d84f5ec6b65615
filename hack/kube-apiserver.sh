#!/usr/bin/env bash
# Builds a real kube-apiserver for the API-server tests from Debian bookworm's source package
# `kubernetes` (1.20.2) with Debian's Go 1.19, and prints its path (see hack/kube-build.sh,
# which builds any binary of that tree). Cached in build/kube-apiserver/ of this clone: a
# second run prints the path at once.
#
#   bash hack/kube-apiserver.sh          # build if needed, print the binary's path
exec bash "$(dirname "$0")/kube-build.sh" kube-apiserver
