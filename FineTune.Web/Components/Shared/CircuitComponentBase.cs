using System.Globalization;
using Microsoft.AspNetCore.Components;

namespace FineTune.Web.Components.Shared;

/// <summary>
/// A component that re-renders for events raised on other threads (training progress, downloads, streamed tokens).
/// Those callbacks carry the raising thread's culture, not the circuit's, so localized text rendered from them came
/// out in English on a zh-TW page; <see cref="RenderOnCircuitAsync"/> restores the circuit's culture first.
/// </summary>
public abstract class CircuitComponentBase : ComponentBase
{
    // Components are created while the circuit renders, under the culture RequestLocalization chose for it.
    private readonly CultureInfo _culture = CultureInfo.CurrentCulture;
    private readonly CultureInfo _uiCulture = CultureInfo.CurrentUICulture;

    /// <summary>Applies <paramref name="change"/> and re-renders on the circuit, in the circuit's culture.</summary>
    protected Task RenderOnCircuitAsync(Action? change = null) => InvokeAsync(() =>
    {
        CultureInfo.CurrentCulture = _culture;
        CultureInfo.CurrentUICulture = _uiCulture;
        change?.Invoke();
        StateHasChanged();
    });
}
