# FineTune in a container: docker build -t finetune . &&
#   docker run -p 8080:8080 -v finetune-data:/data -e FineTune__AccessToken=CHOOSE-ONE finetune
# (reachable from other machines, so the app asks for the access token; it refuses to start without one)
# CUDA build (where the package source serves TorchSharp-cuda-linux): --build-arg TORCH_BACKEND=cuda
# and run with --gpus all.
ARG TORCH_BACKEND=cpu

FROM mcr.microsoft.com/dotnet/sdk:10.0-noble AS build
ARG TORCH_BACKEND
WORKDIR /src
COPY Directory.Build.props Directory.Packages.props FineTune.sln ./
COPY FineTune.Engine/FineTune.Engine.csproj FineTune.Engine/
COPY FineTune.Web/FineTune.Web.csproj FineTune.Web/
RUN dotnet restore FineTune.Web/FineTune.Web.csproj -p:TorchBackend=${TORCH_BACKEND}
COPY FineTune.Engine/ FineTune.Engine/
COPY FineTune.Web/ FineTune.Web/
COPY wwwroot/ wwwroot/
COPY samples/tutorial-qa.xlsx samples/
RUN dotnet publish FineTune.Web/FineTune.Web.csproj -c Release -o /app --no-restore -p:TorchBackend=${TORCH_BACKEND}

# Ubuntu 24.04 has the GCC 13 C++ runtime that TorchSharp 0.107 needs.
FROM mcr.microsoft.com/dotnet/aspnet:10.0-noble AS runtime
WORKDIR /app
COPY --from=build /app ./
RUN mkdir -p /data && chown $APP_UID /data
VOLUME /data
# Everything durable lives on the /data volume: database, uploads, runs and data-protection keys (FineTune's data
# folder), and the Hugging Face cache and token (HF_HOME: /data/huggingface/hub, /data/huggingface/token), so a
# recreated container neither downloads models again nor signs its users out.
ENV FineTune__DataDirectory=/data \
    HF_HOME=/data/huggingface \
    Urls=http://+:8080
EXPOSE 8080
USER $APP_UID
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD ["dotnet", "FineTune.Web.dll", "healthcheck", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["dotnet", "FineTune.Web.dll"]
