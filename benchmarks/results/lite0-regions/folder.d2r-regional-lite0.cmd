instar eval folder --data /tmp/ev/demo --preset d2r-regional-lite0 --train /tmp/ev/demo/train  --json /tmp/ev/t8/folder.d2r-regional-lite0.json -q --workdir /tmp/ev/wd8/folder.d2r-regional-lite0
