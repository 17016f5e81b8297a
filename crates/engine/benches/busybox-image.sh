# Sourced by engine-env.sh and dockerd-env.sh: builds "$work/busybox.tar", a one-layer
# busybox:latest image in `docker save` format from this host's static busybox. Names are
# sorted and times clamped so that both engines (and every run) get the identical image.
# Needs: $work (an empty scratch directory owned by the caller), /usr/bin/busybox.

mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp" "$work/img"
cp /usr/bin/busybox "$work/rootfs/bin/busybox"
for applet in $(/usr/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$work/rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$work/rootfs/etc/passwd"
printf 'root:x:0:\n' >"$work/rootfs/etc/group"
tar -C "$work/rootfs" --sort=name --mtime=@1704067200 --owner=0 --group=0 --numeric-owner \
    -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir -p "$work/img/$diff_id"
mv "$work/layer.tar" "$work/img/$diff_id/layer.tar"
cat >"$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z",
 "config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
JSON
config_id=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/img/$config_id.json"
printf '[{"Config":"%s.json","RepoTags":["busybox:latest"],"Layers":["%s/layer.tar"]}]' \
    "$config_id" "$diff_id" >"$work/img/manifest.json"
tar -C "$work/img" --sort=name --mtime=@1704067200 --owner=0 --group=0 --numeric-owner \
    -cf "$work/busybox.tar" .
rm -rf "$work/rootfs" "$work/img"
