namespace FineTune.Web;

/// <summary>Marker for the app's strings: Resources/SharedResource.resx (English) and SharedResource.zh-TW.resx.</summary>
public sealed class SharedResource;
