namespace FineTune.Bench;

/// <summary>--name value pairs; flags without a value read as "true".</summary>
internal sealed class Options
{
    private readonly Dictionary<string, string> _values = new(StringComparer.Ordinal);

    public Options(string[] args)
    {
        for (int i = 0; i < args.Length; i++)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal))
                throw new ArgumentException($"Unexpected argument '{args[i]}'; options look like --name value.");
            string name = args[i][2..];
            bool hasValue = i + 1 < args.Length && !args[i + 1].StartsWith("--", StringComparison.Ordinal);
            _values[name] = hasValue ? args[++i] : "true";
        }
    }

    public string Required(string name) =>
        _values.TryGetValue(name, out var v) ? v : throw new ArgumentException($"--{name} is required.");

    public string? Optional(string name) => _values.GetValueOrDefault(name);

    public int Int(string name, int fallback) => _values.TryGetValue(name, out var v) ? int.Parse(v, System.Globalization.CultureInfo.InvariantCulture) : fallback;

    public bool Flag(string name) => _values.ContainsKey(name);
}
