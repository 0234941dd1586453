using FineTune.Tests.Web.Support;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.Extensions.DependencyInjection;

namespace FineTune.Tests.Web.Infrastructure;

public class DataProtectionKeysTests
{
    [Fact]
    public void Keys_live_in_the_data_folder_so_a_new_host_on_it_reads_what_the_old_one_protected()
    {
        using var first = new WebAppHost();
        string secret = first.Services.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Protect("signed in");

        string keys = Path.Combine(first.DataDirectory, "keys");
        Assert.NotEmpty(Directory.GetFiles(keys, "key-*.xml"));

        // A recreated container: a new process on the same data folder.
        using var second = new WebAppHost(settings: new Dictionary<string, string?> { ["FineTune:DataDirectory"] = first.DataDirectory });
        Assert.Equal("signed in", second.Services.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(secret));
    }
}
