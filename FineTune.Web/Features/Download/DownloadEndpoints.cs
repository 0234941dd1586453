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
        endpoints.MapGet("/data/template.xlsx", () =>
            Results.File(Data.QaTemplate.Create(), Data.QaTemplate.ContentType, Data.QaTemplate.FileName));
        return endpoints;
    }
}
