using System.IO.Compression;
using FineTune.Engine.Adapters;
using FineTune.Engine.Models;
using FineTune.Tests.Models;
using FineTune.Web.Features.Models;
using FineTune.Web.Headless;
using FineTune.Web.Infrastructure;

namespace FineTune.Tests.Adapters;

/// <summary>Issue 18, findings 4, 7 and 8: broken adapters, hostile zips, links out of the model roots, impossible configs.</summary>
public class AdapterHardeningTests
{
    private static async Task<(int Code, string Err)> Generate(params string[] args)
    {
        var error = new StringWriter();
        int code = await GenerateCommand.RunAsync(args, new StringWriter(), error);
        return (code, error.ToString());
    }

    private static string AdapterZip(string folder, Action<ZipArchive> fill)
    {
        string zip = Path.Combine(folder, "adapter.zip");
        using (var archive = ZipFile.Open(zip, ZipArchiveMode.Create)) fill(archive);
        return zip;
    }

    private static void Text(ZipArchive archive, string name, string text, int unixMode = 0x81A4 /* regular file 0644 */)
    {
        var entry = archive.CreateEntry(name);
        entry.ExternalAttributes = unixMode << 16;
        using var writer = new StreamWriter(entry.Open());
        writer.Write(text);
    }

    [Fact]
    public async Task A_malformed_adapter_config_is_a_clear_error_with_an_exit_code()
    {
        string folder = TestPaths.NewTempFolder("bad-config");
        try
        {
            // Before: an unhandled JsonReaderException (rc 134) from generate --adapter and train --init-adapter.
            string zip = AdapterZip(folder, a => Text(a, "adapter_config.json", "{\"r\": 16, \"lora_alpha\": "));
            var (code, error) = await Generate("--model", ModelFixtures.Folder("qwen2"), "--prompt", "hi", "--greedy", "--max-new-tokens", "1", "--adapter", zip);
            Assert.Equal(1, code);
            Assert.Contains("adapter_config.json cannot be read", error);

            string adapter = Path.Combine(folder, "typed");
            Directory.CreateDirectory(adapter);
            File.WriteAllText(Path.Combine(adapter, PeftAdapter.ConfigFile), "{\"r\": \"sixteen\"}");
            var e = Assert.Throws<AdapterFormatException>(() => PeftAdapter.ReadSettings(adapter));
            Assert.Contains("at r", e.Message);

            var trainError = new StringWriter();
            int trainCode = TrainCommand.Run(["--model", ModelFixtures.Folder("qwen2"), "--data", TestPaths.InRepo("samples", "tutorial-qa.csv"),
                "--output", Path.Combine(folder, "out.zip"), "--init-adapter", adapter, "--epochs", "1"], new StringWriter(), trainError);
            Assert.Equal(2, trainCode);
            Assert.Contains("cannot be read at r", trainError.ToString());
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public async Task Zip_entries_that_are_links_are_refused()
    {
        string folder = TestPaths.NewTempFolder("link-zip");
        try
        {
            string zip = AdapterZip(folder, a =>
            {
                Text(a, "adapter_config.json", "{\"r\": 4}");
                Text(a, "adapter_model.safetensors", "/etc/passwd", unixMode: 0xA1FF); // a symbolic link to /etc/passwd
            });
            // Before: unpacked as a plain file holding the link's target.
            var (code, error) = await Generate("--model", ModelFixtures.Folder("qwen2"), "--prompt", "hi", "--greedy", "--max-new-tokens", "1", "--adapter", zip);
            Assert.Equal(1, code);
            Assert.Contains("symbolic link", error);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void Extraction_is_bounded_in_bytes_and_files()
    {
        string folder = TestPaths.NewTempFolder("bomb");
        try
        {
            string zip = AdapterZip(folder, a =>
            {
                var entry = a.CreateEntry("adapter_model.safetensors", CompressionLevel.SmallestSize);
                using var stream = entry.Open();
                var zeros = new byte[1 << 20];
                for (int i = 0; i < 64; i++) stream.Write(zeros); // 64 MB of zeros in a few KB
            });
            Assert.True(new FileInfo(zip).Length < 1 << 20);
            string target = Path.Combine(folder, "out");
            Directory.CreateDirectory(target);
            var e = Assert.Throws<AdapterFormatException>(() => AdapterArchive.Extract(zip, target, new AdapterArchive.Limits(MaxBytes: 8 << 20)));
            Assert.Contains("more than 8 MB", e.Message);
            Assert.Empty(Directory.EnumerateFileSystemEntries(target)); // nothing left half-written

            string many = Path.Combine(folder, "many.zip");
            using (var archive = ZipFile.Open(many, ZipArchiveMode.Create))
                for (int i = 0; i < 20; i++) Text(archive, $"f{i}.txt", "x");
            Assert.Throws<AdapterFormatException>(() => AdapterArchive.Extract(many, target, new AdapterArchive.Limits(MaxFiles: 10)));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void A_link_in_the_middle_of_a_path_cannot_lead_out_of_the_model_roots()
    {
        string root = TestPaths.NewTempFolder("roots");
        try
        {
            string models = Path.Combine(root, "models"), outside = Path.Combine(root, "outside", "m");
            Directory.CreateDirectory(models);
            Directory.CreateDirectory(outside);
            File.WriteAllText(Path.Combine(outside, "config.json"), "{}");
            File.WriteAllText(Path.Combine(outside, "model.safetensors"), "");
            Directory.CreateSymbolicLink(Path.Combine(models, "linkdir"), Path.Combine(root, "outside"));
            var folders = new LocalModelFolders(new DataPaths(Path.Combine(root, "data"), [models]));

            // Before: only the last part was checked for being a link, so models/linkdir/m was accepted.
            Assert.Equal(LocalFolderProblem.OutsideRoots, folders.Check(Path.Combine(models, "linkdir", "m")).Problem);
            Assert.Equal(LocalFolderProblem.OutsideRoots, folders.Check(Path.Combine(models, "linkdir")).Problem);
            Assert.Equal(Path.Combine(root, "outside", "m"), LocalModelFolders.RealPath(Path.Combine(models, "linkdir", "m")));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Theory]
    [InlineData("num_attention_heads", "0")]
    [InlineData("hidden_size", "1000000000")]
    [InlineData("hidden_size", "1e9")]
    [InlineData("vocab_size", "-5")]
    public void An_impossible_config_is_refused_naming_the_field(string field, string value)
    {
        string folder = TestPaths.NewTempFolder("bad-shape");
        try
        {
            foreach (string file in Directory.GetFiles(ModelFixtures.Folder("qwen2"))) File.Copy(file, Path.Combine(folder, Path.GetFileName(file)));
            string config = Path.Combine(folder, "config.json");
            File.WriteAllText(config, System.Text.RegularExpressions.Regex.Replace(File.ReadAllText(config), $"\"{field}\": [^,\n]+", $"\"{field}\": {value}"));
            // Before: DivideByZeroException in ModelShape, OverflowException in the estimates (the wizard's circuit died).
            var e = Assert.Throws<ModelFormatException>(() => ModelConfig.Load(folder));
            Assert.Contains(field, e.Message);
            Assert.Null(ModelCatalog.FactsOf(new FineTune.Web.Features.Settings.TrainingSettings { Source = FineTune.Web.Features.Settings.ModelSource.Local, Model = folder }));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void A_config_far_larger_than_its_weights_is_refused_before_anything_is_built()
    {
        string folder = TestPaths.NewTempFolder("big-config");
        try
        {
            foreach (string file in Directory.GetFiles(ModelFixtures.Folder("qwen2"))) File.Copy(file, Path.Combine(folder, Path.GetFileName(file)));
            string config = Path.Combine(folder, "config.json");
            File.WriteAllText(config, File.ReadAllText(config).Replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 2000").Replace("\"intermediate_size\": 128", "\"intermediate_size\": 1000000"));
            _ = FineTune.Engine.Backend.ComputeBackend.Current;
            var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(folder, new ModelLoadOptions { Device = TorchSharp.torch.CPU }));
            Assert.Contains("num_hidden_layers 2000", e.Message);
            Assert.Contains("does not belong to these weights", e.Message);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
