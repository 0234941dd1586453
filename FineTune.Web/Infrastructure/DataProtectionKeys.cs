using Microsoft.AspNetCore.DataProtection;
using Microsoft.AspNetCore.DataProtection.KeyManagement;
using Microsoft.AspNetCore.DataProtection.Repositories;
using Microsoft.Extensions.Options;

namespace FineTune.Web.Infrastructure;

/// <summary>
/// The keys that sign the sign-in cookie and Blazor's circuit state live in the data folder (<see cref="DataPaths.Keys"/>),
/// beside the data they guard: a recreated container with the same /data volume keeps its users signed in, where
/// ASP.NET's default (~/.aspnet/DataProtection-Keys, inside the container) lost them on every recreate.
/// </summary>
public static class DataProtectionKeys
{
    public static IServiceCollection AddDataProtectionKeysInDataFolder(this IServiceCollection services)
    {
        services.AddDataProtection().SetApplicationName("FineTune");
        services.AddSingleton<IConfigureOptions<KeyManagementOptions>>(provider => new ConfigureOptions<KeyManagementOptions>(options =>
        {
            var loggers = provider.GetRequiredService<ILoggerFactory>();
            string keys = provider.GetRequiredService<DataPaths>().Keys;
            try
            {
                options.XmlRepository = new FileSystemXmlRepository(Directory.CreateDirectory(keys), loggers);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // An unusable data folder must not stop the app (DataFolderStatus shows a page saying why); until it
                // is fixed the keys are ASP.NET's default ones and sign-ins do not outlive a restart.
                loggers.CreateLogger(typeof(DataProtectionKeys)).LogWarning("Data-protection keys cannot be kept in {Folder}: {Problem}", keys, e.Message);
            }
        }));
        return services;
    }
}
