using System.Net;
using System.Text.Json;
using FineTune.Tests.Web.Support;

namespace FineTune.Tests.Web.Infrastructure;

public class HealthChecksTests
{
    [Fact]
    public async Task Healthz_reports_every_check_and_keeps_the_backend_details()
    {
        using var app = new WebAppHost();

        var response = await app.Client.GetAsync("/healthz");

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        var root = json.RootElement;
        Assert.Equal("ok", root.GetProperty("status").GetString());
        // The shape README documents and scripts read: backend.device/description/reason at the top.
        var backend = root.GetProperty("backend");
        Assert.Contains(backend.GetProperty("device").GetString(), new[] { "cpu", "cuda" });
        Assert.False(string.IsNullOrWhiteSpace(backend.GetProperty("reason").GetString()));
        Assert.False(string.IsNullOrWhiteSpace(backend.GetProperty("description").GetString()));
        // Whether the engine's own CUDA kernels run: "on: NVRTC ..." on a GPU, "off: why" elsewhere.
        string kernels = backend.GetProperty("kernels").GetString()!;
        Assert.True(kernels.StartsWith("on: ", StringComparison.Ordinal) || kernels.StartsWith("off: ", StringComparison.Ordinal), kernels);
        if (backend.GetProperty("device").GetString() == "cpu") Assert.StartsWith("off: ", kernels);
        // Whether training steps run as CUDA graphs: off on the CPU and wherever the kernels are off.
        string graphs = backend.GetProperty("cudaGraphs").GetString()!;
        Assert.True(graphs.StartsWith("on: ", StringComparison.Ordinal) || graphs.StartsWith("off: ", StringComparison.Ordinal), graphs);
        if (kernels.StartsWith("off: ", StringComparison.Ordinal)) Assert.StartsWith("off: ", graphs);
        // Whether causal attention runs through libtorch's flash kernels: off on the CPU.
        string flash = backend.GetProperty("flashAttention").GetString()!;
        Assert.True(flash.StartsWith("on: ", StringComparison.Ordinal) || flash.StartsWith("off: ", StringComparison.Ordinal), flash);
        if (backend.GetProperty("device").GetString() == "cpu") Assert.StartsWith("off: ", flash);
        var checks = root.GetProperty("checks");
        foreach (string name in new[] { "database", "data-folder", "disk", "backend", "memory" })
            Assert.Equal("ok", checks.GetProperty(name).GetProperty("status").GetString());
        Assert.Contains(app.DataDirectory, checks.GetProperty("data-folder").GetProperty("description").GetString());
        Assert.True(checks.GetProperty("disk").GetProperty("data").GetProperty("dataFreeBytes").GetInt64() > 0);
        // The process's memory as the OS and the GC see it (read after an upload or a failed model load).
        var memory = checks.GetProperty("memory").GetProperty("data");
        Assert.True(memory.GetProperty("residentBytes").GetInt64() > memory.GetProperty("gcHeapBytes").GetInt64());
    }

    [Fact]
    public async Task Healthz_answers_503_and_says_why_when_the_data_folder_is_gone()
    {
        using var app = new WebAppHost();
        Assert.Equal(HttpStatusCode.OK, (await app.Client.GetAsync("/healthz")).StatusCode);
        try
        {
            // The volume went away and something else took its place: nothing can be written or read there.
            Directory.Delete(app.DataDirectory, recursive: true);
            File.WriteAllText(app.DataDirectory, "");
            // Pooled SQLite connections still hold the deleted file open; a new connection is what finds it gone.
            Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();

            var response = await app.Client.GetAsync("/healthz");

            Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
            using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
            Assert.Equal("unhealthy", json.RootElement.GetProperty("status").GetString());
            var checks = json.RootElement.GetProperty("checks");
            Assert.Equal("unhealthy", checks.GetProperty("data-folder").GetProperty("status").GetString());
            Assert.Contains("Cannot write to the data folder", checks.GetProperty("data-folder").GetProperty("description").GetString());
            Assert.Equal("unhealthy", checks.GetProperty("database").GetProperty("status").GetString());
            Assert.Equal("ok", checks.GetProperty("backend").GetProperty("status").GetString());
        }
        finally
        {
            File.Delete(app.DataDirectory);
            Directory.CreateDirectory(app.DataDirectory);
        }
    }
}
