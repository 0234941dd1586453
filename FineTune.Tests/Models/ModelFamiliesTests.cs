using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using FineTune.Tests.Support;

namespace FineTune.Tests.Models;

/// <summary>The family registry against the fixture models: every family has one, and its facts match the built model.</summary>
[Trait(Category.Name, Category.Parity)]
public sealed class ModelFamiliesTests
{
    public ModelFamiliesTests() => _ = ComputeBackend.Current;

    [Fact]
    public void Every_registered_family_has_a_fixture_model()
    {
        var fixtureTypes = ModelFixtures.Names.Select(n => ModelConfig.Load(ModelFixtures.Folder(n)).ModelType).ToHashSet();
        Assert.Equal(ModelFamilies.SupportedModelTypes.Order(), fixtureTypes.Order());
        Assert.Equal(ModelFamilies.SupportedModelTypes, ModelConfig.SupportedModelTypes);
    }

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void Linear_names_and_default_targets_are_the_built_models(string fixture)
    {
        using var model = ModelLoader.Load(ModelFixtures.Folder(fixture));
        var family = model.Config.Family;
        var linears = model.NamedLinears().Select(l => l.Name).ToList();

        // Each linear layer answers to exactly one of the family's names, and each name selects layers.
        Assert.All(linears, name => Assert.Single(family.LinearNames, target => LoraInjector.Matches(name, target)));
        Assert.All(family.LinearNames, target => Assert.Contains(linears, name => LoraInjector.Matches(name, target)));
        // One of each per layer, lm_head once.
        Assert.Equal((family.LinearNames.Count - 1) * model.Config.NumHiddenLayers + 1, linears.Count);
        // The defaults attach (no LoraTargetNotFoundException) to the attention of every layer.
        var attached = LoraInjector.Attach(model.NamedLinears(), new LoraSettings(Rank: 2, TargetModules: family.DefaultLoraTargets), seed: 0);
        Assert.Equal(family.DefaultLoraTargets.Count * model.Config.NumHiddenLayers, attached.Count);
        Assert.StartsWith(family.Decoder.Names.Model + ".", attached[0], StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void Facts_from_the_meta_device_match_the_loaded_model(string fixture)
    {
        var facts = ModelFacts.Of(ModelFixtures.Folder(fixture));
        using var model = ModelLoader.Load(ModelFixtures.Folder(fixture));
        Assert.Equal(model.parameters().Sum(p => p.numel()), facts.TotalParameters); // tied: one tensor once loaded
        Assert.Equal(model.NamedLinears().Select(l => l.Name), facts.LinearNames);
        Assert.Equal(model.NamedLinears().Where(l => l.Name != "lm_head").Sum(l => l.Layer.weight!.numel()), facts.QuantizableParameters);
        var targets = facts.Family.DefaultLoraTargets;
        LoraInjector.Attach(model.NamedLinears(), new LoraSettings(Rank: 4, TargetModules: targets), seed: 0);
        Assert.Equal(model.parameters().Where(p => p.requires_grad).Sum(p => p.numel()), facts.LoraParameters(4, targets));
        Assert.Same(facts, ModelFacts.Of(ModelFixtures.Folder(fixture))); // cached per folder
    }

    [Fact]
    public void An_unknown_model_type_names_the_supported_ones()
    {
        var e = Assert.Throws<UnsupportedModelException>(() => ModelConfig.Parse("{\"model_type\": \"gpt2\"}"));
        Assert.Contains(string.Join(", ", ModelFamilies.SupportedModelTypes), e.Message);
    }

    public static TheoryData<string> Fixtures => [.. ModelFixtures.Names];
}
