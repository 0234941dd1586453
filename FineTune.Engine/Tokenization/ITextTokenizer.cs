namespace FineTune.Engine.Tokenization;

/// <summary>
/// Text ↔ token ids with the same results as Hugging Face <c>AutoTokenizer</c>.
/// Special-token strings written in the text (such as <c>&lt;|im_start|&gt;</c>) become their ids,
/// as HF does with <c>split_special_tokens=False</c>.
/// </summary>
public interface ITextTokenizer
{
    /// <summary>Like HF <c>tokenizer(text)["input_ids"]</c>: BOS/EOS added exactly where the model's tokenizer adds them.</summary>
    IReadOnlyList<int> Encode(string text);

    /// <summary>Like HF <c>tokenizer(text, add_special_tokens=...)</c>. False: no BOS/EOS from the post-processor.</summary>
    IReadOnlyList<int> Encode(string text, bool addSpecialTokens);

    /// <summary>Like HF <c>tokenizer.decode(ids, skip_special_tokens=...)</c>.</summary>
    string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false);

    /// <summary>The id of a token string (vocabulary or added token), or null when unknown.</summary>
    int? TokenToId(string token);

    /// <summary>The token string of an id, or null when the id is outside the vocabulary.</summary>
    string? IdToToken(int id);

    /// <summary>Number of ids the tokenizer can produce: base vocabulary plus added tokens (HF <c>len(tokenizer)</c>).</summary>
    int VocabSize { get; }

    /// <summary>The tokenizer's eos_token (tokenizer_config.json), when it has one.</summary>
    int? EosTokenId { get; }

    int? PadTokenId { get; }

    int? BosTokenId { get; }

    /// <summary>Every id that ends generation: the eos_token plus generation_config.json's eos_token_id (int or list).</summary>
    IReadOnlyList<int> EosTokenIds { get; }

    /// <summary>Ids of tokens HF marks special (skipped by <c>skip_special_tokens=True</c>).</summary>
    IReadOnlySet<int> SpecialTokenIds { get; }

    /// <summary>The chat template from chat_template.jinja or tokenizer_config.json, when the model has one.</summary>
    string? ChatTemplate { get; }

    /// <summary>The bos/eos/pad/unk token strings, for templates that refer to them.</summary>
    string? BosToken { get; }

    string? EosToken { get; }
}
