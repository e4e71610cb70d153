# syntax=docker/dockerfile:1
# The sluice-runner image: a release build on Debian, copied onto distroless
# (no shell, no package manager) and run as a non-root user.
# Build from the repository root (see README, "Container images"):
#   docker build -f docker/runner.Dockerfile -t ghcr.io/sluice-dev/sluice-runner:0.1.0 .
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Link zlib statically: the distroless cc image has glibc, libgcc and libssl, not libz.
ENV LIBZ_SYS_STATIC=1
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice-runner --bin sluice-runner \
    && cp target/release/sluice-runner /usr/local/bin/sluice-runner

FROM ${RUNTIME_IMAGE}
COPY --from=build /usr/local/bin/sluice-runner /usr/local/bin/sluice-runner
# distroless's "nonroot" user; the chart and the controller also set runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice-runner"]
