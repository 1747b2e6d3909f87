#!/usr/bin/env bash
# Build the edgefed image once per content and print its tag (last line of stdout):
#
#   image=$(deploy/build-image.sh)        # e.g. edgefed:3f2a9c41d0be, also tagged edgefed:latest
#
# The base image comes from deploy/base-image.sh (python:3.11-slim, or a local Debian image when
# no registry answers) and the wheels from deploy/wheelhouse.sh (so the build needs no index).
# The tag is a hash of the base image id, the Dockerfile, .dockerignore, the wheelhouse inputs
# and every file of the app that goes into the image: an unchanged tree reuses the image, and
# images of earlier trees are removed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "build-image: $*" >&2; }

base=$(deploy/base-image.sh | tail -n 1)
if ! deploy/wheelhouse.sh >&2; then
    say "no wheelhouse (pip could not fetch); the build will use pip's index"
    rm -rf deploy/wheelhouse
fi

# The files of the build context that matter (what .dockerignore leaves in), content-hashed.
context_files() {
    git ls-files -z --cached --others --exclude-standard -- . \
        ':!tests' ':!bench' ':!.ci' ':!deploy/wheelhouse' ':!deploy/certs'
}
hash=$(
    {
        docker image inspect -f '{{.Id}}' "$base"
        cat deploy/wheelhouse/.requirements 2>/dev/null || true
        context_files | xargs -0 sha256sum 2>/dev/null || true  # deleted files: skipped
    } | sha256sum | cut -c1-12
)
tag=edgefed:$hash

if docker image inspect "$tag" >/dev/null 2>&1; then
    say "$tag is up to date"
else
    say "building $tag from $base"
    started=$(date +%s)
    docker build -f deploy/Dockerfile --build-arg BASE_IMAGE="$base" -t "$tag" . >&2
    say "built $tag in $(( $(date +%s) - started )) s"
fi
docker tag "$tag" edgefed:latest
# Earlier content hashes are dead weight (about 1.7 GB each): drop them unless a container uses one.
for old in $(docker images edgefed --format '{{.Repository}}:{{.Tag}}' | grep -E ':[0-9a-f]{12}$'); do
    [ "$old" = "$tag" ] || docker image rm "$old" >/dev/null 2>&1 || true
done
echo "$tag"
