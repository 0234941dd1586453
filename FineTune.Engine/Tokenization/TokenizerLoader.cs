namespace FineTune.Engine.Tokenization;

/// <summary>Opens the tokenizer of a model folder (as downloaded from the Hub) with the right implementation.</summary>
public static class TokenizerLoader
{
    /// <summary>
    /// tokenizer.json → <see cref="TokenizerJson"/>; otherwise qwen.tiktoken → <see cref="QwenTiktokenTokenizer"/>.
    /// tokenizer_config.json, chat_template.jinja and generation_config.json add special tokens and the template.
    /// </summary>
    public static ITextTokenizer Load(string modelFolder)
    {
        if (!Directory.Exists(modelFolder))
            throw new TokenizerLoadException($"The model folder {modelFolder} does not exist.");
        var settings = TokenizerSettings.Load(modelFolder);
        string json = Path.Combine(modelFolder, "tokenizer.json");
        if (File.Exists(json)) return new TokenizerJson(json, settings);
        string tiktoken = Path.Combine(modelFolder, "qwen.tiktoken");
        if (File.Exists(tiktoken)) return new QwenTiktokenTokenizer(tiktoken, settings);
        throw new TokenizerLoadException(
            $"{modelFolder} has neither tokenizer.json nor qwen.tiktoken. Models with only a SentencePiece tokenizer.model " +
            "are not supported: pick a model whose Hub page lists tokenizer.json.");
    }
}
