# Kms in dev mode, SoftHSMv2 inside the container.
#   docker build -t kms .
#   docker run --rm -it -v kms-data:/data kms
# Until caller authentication lands the server serves loopback only: call it from inside
# the container (docker exec ... buf curl / a .NET client), not from the host.

FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
WORKDIR /src
COPY global.json Directory.Build.props Directory.Packages.props .editorconfig Kms.sln ./
COPY proto/ proto/
COPY hsm-config/ hsm-config/
COPY src/ src/
RUN dotnet publish src/Kms.Server/Kms.Server.csproj -c Release -o /app --nologo

FROM mcr.microsoft.com/dotnet/aspnet:10.0
RUN apt-get update \
 && apt-get install -y --no-install-recommends softhsm2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /home/kms kms \
 && mkdir -p /data && chown kms /data
COPY --from=build /app /app
COPY hsm-config/ /app/hsm-config/
USER kms
ENV KMS_DATA_DIR=/data
VOLUME /data
# init-token.sh is idempotent: the token (and, on first start, the domain key) persist in /data.
ENTRYPOINT ["/bin/sh", "-c", "/app/hsm-config/init-token.sh \"$KMS_DATA_DIR\" kms-dev && exec dotnet /app/Kms.Server.dll --dev \"$@\"", "--"]
