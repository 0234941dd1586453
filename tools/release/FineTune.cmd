@echo off
rem FineTune for Windows: starts the app from this folder (data in .\data, models in the Hugging Face cache)
rem and opens the wizard in the default browser once it answers. Close this window to stop it.
cd /d "%~dp0"
start "" /b powershell -NoProfile -WindowStyle Hidden -Command "for ($i = 0; $i -lt 120; $i++) { try { Invoke-WebRequest -UseBasicParsing http://localhost:5080/healthz | Out-Null; Start-Process http://localhost:5080; break } catch { Start-Sleep -Seconds 1 } }"
"%~dp0FineTune.Web.exe" --contentRoot "%~dp0."
