using FineTune.Engine.Backend;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Tests.Backend;

public class ComputeBackendTests
{
    [Fact]
    public void Chooses_a_backend_and_says_why()
    {
        BackendInfo backend = ComputeBackend.Current;

        Assert.False(string.IsNullOrWhiteSpace(backend.Reason));
        Assert.StartsWith(backend.IsCuda ? "CUDA: " : "CPU: ", backend.Description);
    }

    [Fact]
    public void Runs_a_matmul_and_a_backward_pass_on_the_cpu()
    {
        _ = ComputeBackend.Current;
        using var scope = NewDisposeScope();
        // y = sum(x @ w) → dy/dw[i, j] = sum over rows of x[:, i]
        var x = tensor(new float[] { 1, 2, 3, 4, 5, 6 }, [2, 3]);
        var w = ones(3, 2, requires_grad: true);

        var product = x.matmul(w);
        product.sum().backward();

        Assert.Equal(new float[] { 6, 6, 15, 15 }, product.data<float>().ToArray());
        Assert.Equal(new float[] { 5, 5, 7, 7, 9, 9 }, w.grad!.data<float>().ToArray());
    }
}
