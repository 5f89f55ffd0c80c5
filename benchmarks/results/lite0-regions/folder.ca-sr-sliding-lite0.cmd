instar eval folder --data /tmp/ev/demo --preset ca-sr-sliding-lite0 --train /tmp/ev/demo/train  --json /tmp/ev/t8/folder.ca-sr-sliding-lite0.json -q --workdir /tmp/ev/wd8/folder.ca-sr-sliding-lite0
