namespace FineTune.Web.Features.Download;

public static class DownloadEndpoints
{
    /// <summary>GET /runs/{id}/adapter.zip, /runs/{id}/merged.zip, /runs/{id}/gguf/{file} (GGUF and Modelfile) and /data/template.xlsx.</summary>
    public static IEndpointRouteBuilder MapDownloadEndpoints(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapGet("/runs/{id:int}/adapter.zip", async (int id, ArtifactPackager packager, CancellationToken cancellationToken) =>
        {
            try
            {
                string zip = await packager.AdapterZipAsync(id, cancellationToken);
                return Results.File(zip, "application/zip", Path.GetFileName(zip), enableRangeProcessing: true);
            }
            catch (Exception e) when (e is FileNotFoundException or KeyNotFoundException)
            {
                return Results.NotFound(e.Message);
            }
        });
        endpoints.MapGet("/runs/{id:int}/merged.zip", (int id, ArtifactPackager packager) =>
        {
            try
            {
                string zip = packager.MergedZip(id);
                return Results.File(zip, "application/zip", Path.GetFileName(zip), enableRangeProcessing: true);
            }
            catch (FileNotFoundException e)
            {
                return Results.NotFound(e.Message);
            }
        });
        endpoints.MapGet("/runs/{id:int}/gguf/{file}", (int id, string file, GgufDownloads gguf) =>
            gguf.Served(id, file) is { } path
                ? Results.File(path, file.EndsWith(".gguf", StringComparison.Ordinal) ? "application/octet-stream" : "text/plain; charset=utf-8", file, enableRangeProcessing: true)
                : Results.NotFound($"Run {id} has no export named {file}."));
        // The run's curves, beside each other in the adapter folder: loss.csv and the TensorBoard event files (zipped, as they are now).
        endpoints.MapGet("/runs/{id:int}/loss.csv", (int id, ArtifactPackager packager) =>
            File.Exists(Path.Combine(packager.AdapterDirectory(id), "loss.csv"))
                ? Results.File(Path.Combine(packager.AdapterDirectory(id), "loss.csv"), "text/csv", $"finetune-run{id}-loss.csv")
                : Results.NotFound($"Run {id} has no loss.csv yet."));
        endpoints.MapGet("/runs/{id:int}/tensorboard.zip", (int id, ArtifactPackager packager) =>
        {
            string folder = Path.Combine(packager.AdapterDirectory(id), FineTune.Engine.Training.TensorBoardLog.FolderName);
            if (!Directory.Exists(folder) || !Directory.EnumerateFiles(folder).Any()) return Results.NotFound($"Run {id} has no TensorBoard events yet.");
            var zip = new MemoryStream();
            using (var archive = new System.IO.Compression.ZipArchive(zip, System.IO.Compression.ZipArchiveMode.Create, leaveOpen: true))
                foreach (string file in Directory.EnumerateFiles(folder))
                    System.IO.Compression.ZipFileExtensions.CreateEntryFromFile(archive, file, $"run{id}/{Path.GetFileName(file)}", System.IO.Compression.CompressionLevel.Optimal);
            zip.Position = 0;
            return Results.File(zip, "application/zip", $"finetune-run{id}-tensorboard.zip");
        });
        endpoints.MapGet("/data/template.xlsx", () =>
            Results.File(Data.QaTemplate.Create(), Data.QaTemplate.ContentType, Data.QaTemplate.FileName));
        return endpoints;
    }
}
