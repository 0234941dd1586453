# on-gpu.sh — source this at the start of a command on the GPU machine:
#   source tools/device/on-gpu.sh .device/dotnet.tgz
# It unpacks the carried .NET runtime to /tmp/dotnet and exports:
#   PATH, DOTNET_ROOT        so that `dotnet App.dll` works
#   FINETUNE_LIBTORCH        the folder of the machine's PyTorch libtorch (CUDA build)
# Seen working (2026-11-28): TorchSharp 0.107.0 with the machine's PyTorch 2.11 (CUDA 13)
# after NativeLibrary.Load of, in order: libc10.so, libtorch_cpu.so, libc10_cuda.so,
# libtorch_cuda.so, libtorch.so, then the app's own libLibTorchSharp.so; then
# torch.InitializeDeviceType(DeviceType.CUDA). bf16 matmul ran at ~770 TFLOP/s.
_tgz=${1:?usage: source on-gpu.sh PATH/TO/dotnet.tgz}
if [ ! -x /tmp/dotnet/dotnet ]; then mkdir -p /tmp/dotnet && tar xzf "$_tgz" -C /tmp/dotnet; fi
export DOTNET_ROOT=/tmp/dotnet PATH=/tmp/dotnet:$PATH DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
export FINETUNE_LIBTORCH=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
echo "on-gpu: dotnet $(dotnet --list-runtimes | head -1 | cut -d' ' -f2), libtorch at $FINETUNE_LIBTORCH"
