#!/bin/sh
exec kubectl apply --server-side=true --force-conflicts -f /internal-crds
