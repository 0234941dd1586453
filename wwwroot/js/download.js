// Saves bytes streamed from the server (DotNetStreamReference) as a file.
window.fineTune = window.fineTune || {};
window.fineTune.download = async (fileName, streamReference) => {
    const buffer = await streamReference.arrayBuffer();
    const url = URL.createObjectURL(new Blob([buffer]));
    const anchor = document.createElement("a");
    anchor.href = url;
    anchor.download = fileName ?? "";
    anchor.click();
    URL.revokeObjectURL(url);
};
