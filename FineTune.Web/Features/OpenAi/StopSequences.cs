namespace FineTune.Web.Features.OpenAi;

/// <summary>
/// OpenAI's `stop`: the text ends before the first stop sequence, which is not returned. Streamed pieces are held back
/// while their end could still be the start of a stop sequence, so no part of one reaches the client.
/// </summary>
public sealed class StopSequences(IReadOnlyList<string> stops)
{
    private readonly string[] _stops = stops.Where(s => s.Length > 0).ToArray();
    private string _pending = string.Empty;

    /// <summary>True once a stop sequence was seen; later pieces are dropped.</summary>
    public bool Stopped { get; private set; }

    /// <summary>The text that can be sent now.</summary>
    public string Push(string piece)
    {
        if (Stopped) return string.Empty;
        _pending += piece;
        int cut = _stops.Select(s => _pending.IndexOf(s, StringComparison.Ordinal)).Where(i => i >= 0).DefaultIfEmpty(-1).Min();
        if (cut >= 0)
        {
            Stopped = true;
            string before = _pending[..cut];
            _pending = string.Empty;
            return before;
        }
        int hold = _stops.Select(HeldBack).DefaultIfEmpty(0).Max();
        string ready = _pending[..^hold];
        _pending = _pending[^hold..];
        return ready;
    }

    /// <summary>What is left when generation ends without a stop sequence.</summary>
    public string Flush()
    {
        string rest = Stopped ? string.Empty : _pending;
        _pending = string.Empty;
        return rest;
    }

    /// <summary>The longest end of the pending text that is a proper prefix of <paramref name="stop"/>.</summary>
    private int HeldBack(string stop)
    {
        for (int n = Math.Min(stop.Length - 1, _pending.Length); n > 0; n--)
            if (_pending.AsSpan(_pending.Length - n).SequenceEqual(stop.AsSpan(0, n))) return n;
        return 0;
    }
}
