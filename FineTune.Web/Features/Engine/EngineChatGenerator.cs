using System.Runtime.CompilerServices;
using FineTune.Engine.Adapters;
using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using FineTune.Engine.Training;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Engine;

/// <summary>
/// Chat with a run's model through FineTune.Engine: the base model loaded once with the run's adapter attached;
/// the base model's answer is the same model with the adapter switched off. Conversations are written in the run's
/// training layout (its prompt template), so the fine-tuned model sees what it learned. One generation at a time.
/// </summary>
public sealed class EngineChatGenerator(EngineModels models) : IChatGenerator, IDisposable
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private Loaded? _loaded;

    private sealed record Loaded(string Key, CausalLM Model, IReadOnlyList<(string Name, LoraLinear Layer)> Linears, TextGenerator Text, ITextTokenizer Tokenizer, string Folder) : IDisposable
    {
        public void Dispose() => Model.Dispose();
    }

    public async IAsyncEnumerable<TextPiece> StreamAsync(ChatRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken);
        try
        {
            var loaded = await LoadAsync(request, cancellationToken);
            bool useAdapter = request.AdapterDirectory is not null;
            foreach (var (_, layer) in loaded.Linears) layer.AdapterEnabled = useAdapter;

            var settings = loaded.Text.DefaultSettings(loaded.Folder) with
            {
                MaxNewTokens = request.MaxNewTokens,
                DoSample = request.Temperature > 0,
                Temperature = request.Temperature > 0 ? request.Temperature : 1.0,
                TopP = request.TopP,
            };
            settings.Validate();
            // The template the run trained with, so the conversation is written in the layout the adapter learned.
            var template = PromptTemplate.Create(request.PromptTemplate, loaded.Tokenizer);
            var ids = template.EncodePrompt(request.Messages);
            await foreach (var piece in loaded.Text.StreamPiecesAsync(ids, settings, cancellationToken))
                yield return piece;
        }
        finally
        {
            _gate.Release();
        }
    }

    private async Task<Loaded> LoadAsync(ChatRequest request, CancellationToken cancellationToken)
    {
        var settings = new TrainingSettings { Source = request.Source, Model = request.Model };
        string folder = await models.ResolveFolderAsync(settings, cancellationToken);
        // The adapter folder stays attached for both answers; asking for the base alone reuses a loaded fine-tuned model.
        string adapter = request.AdapterDirectory ?? _loaded?.Key.Split('|')[1] ?? string.Empty;
        string key = $"{folder}|{adapter}|{request.FourBit}|{request.DoubleQuantization}";
        if (_loaded?.Key == key || (request.AdapterDirectory is null && _loaded is not null && _loaded.Key.StartsWith(folder + "|", StringComparison.Ordinal)))
            return _loaded!;

        _loaded?.Dispose();
        _loaded = null;
        var model = await Task.Run(() => models.Load(folder, models.ComputeDtype(Precision.Auto), request.FourBit, request.DoubleQuantization), cancellationToken);
        try
        {
            var linears = new CausalLmTraining(model).NamedLinears().ToArray();
            if (adapter.Length > 0)
            {
                LoraInjector.Attach(linears, PeftAdapter.ReadSettings(adapter));
                PeftAdapter.Load(adapter, linears);
            }
            model.eval();
            var tokenizer = TokenizerLoader.Load(folder);
            var text = new TextGenerator(new Generator(model), tokenizer);
            return _loaded = new Loaded(key, model, linears, text, tokenizer, folder);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        _loaded?.Dispose();
        _gate.Dispose();
    }
}
