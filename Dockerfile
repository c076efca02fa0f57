# The Kms server, with SoftHSMv2 inside for demos.
#   docker build -t kms .
#   docker run --rm -it -v kms-data:/data kms                      # dev mode, container loopback only
#   docker run --rm -it -v kms-data:/data -e ASPNETCORE_URLS=https://0.0.0.0:8443 -p 127.0.0.1:8443:8443 kms
# The server listens where ASPNETCORE_URLS says; by default on the container's loopback, like the
# server's own default, so it is reached with docker exec until another address is set. On any
# address every call but health needs a credential: dev mode writes its tokens to /data/tokens and
# its CA to /data/tls/ca.crt (its certificate names localhost, 127.0.0.1 and ::1).
# Set the address with ASPNETCORE_URLS, not --urls: the HEALTHCHECK reads the environment, not the
# server's arguments. Production nodes (Kms__DevMode=false, TLS, a restored domain key):
# docs/deployment.md. .ci/docker-check.sh checks this file without a Docker engine.

FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
WORKDIR /src
COPY global.json Directory.Build.props Directory.Packages.props .editorconfig ./
COPY proto/ proto/
COPY hsm-config/ hsm-config/
COPY src/ src/
RUN dotnet publish src/Kms.Server/Kms.Server.csproj -c Release -o /app --nologo

FROM mcr.microsoft.com/dotnet/aspnet:10.0
RUN apt-get update \
 && apt-get install -y --no-install-recommends softhsm2 libjemalloc2 \
 && ln -s "$(ls /usr/lib/*-linux-gnu/libjemalloc.so.2 | head -n 1)" /usr/local/lib/libjemalloc.so.2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /home/kms kms \
 && mkdir -p /data && chown kms /data && chmod 0700 /data
COPY --from=build /app /app
COPY hsm-config/ /app/hsm-config/
WORKDIR /app
USER kms
# One variable per line: .ci/docker-check.sh starts the published server with these.
ENV KMS_DATA_DIR=/data
# The C heap: jemalloc, two arenas, freed pages returned after 2 s, as ./dev.sh runs it (README,
# configuration; -e LD_PRELOAD= gives glibc's malloc back, MALLOC_ARENA_MAX its number of arenas).
ENV LD_PRELOAD=/usr/local/lib/libjemalloc.so.2
ENV MALLOC_CONF=narenas:2,dirty_decay_ms:2000
ENV MALLOC_ARENA_MAX=2
ENV Kms__DevMode=true
ENV ASPNETCORE_URLS=https://127.0.0.1:8443
# The base image's plain-http port 8080 is not wanted: the server speaks only TLS 1.3.
ENV ASPNETCORE_HTTP_PORTS=
VOLUME /data
EXPOSE 8443
# The SoftHSM token named by Hsm__TokenLabel (dev mode's kms-dev by default) is created once in
# /data/hsm and persists there, as does the domain key dev mode creates in it on first start.
ENTRYPOINT ["/bin/sh", "-c", "/app/hsm-config/init-token.sh \"$KMS_DATA_DIR\" \"${Hsm__TokenLabel:-kms-dev}\" && exec dotnet /app/Kms.Server.dll \"$@\"", "--"]
# grpc.health.v1 Check of the whole service (HSM and database), by the server's own binary:
# the aspnet image has no curl, wget or grpc_health_probe, and /metrics says nothing of health.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["dotnet", "/app/Kms.Server.dll", "--health-probe"]
