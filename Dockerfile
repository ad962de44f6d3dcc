# The vaultbridge managed plugin's rootfs, for machines with network access:
#
#   packaging/build-plugin.sh --dockerfile --enable
#
# (builds this image, exports it as rootfs/ next to config.json, runs
# `docker plugin create vaultbridge:<version>` and enables it). The final image
# is the same tree packaging/rootfs.sh lays out for the offline path: a
# statically linked binary on scratch, no shell.
ARG RUST_VERSION=1.88
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release \
      --target x86_64-unknown-linux-gnu -p vaultbridge \
 && packaging/rootfs.sh target/x86_64-unknown-linux-gnu/release/vaultbridge /out

FROM scratch
COPY --from=build /out/rootfs/ /
ENTRYPOINT ["/vaultbridge", "serve"]
