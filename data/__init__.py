"""Datasets for mlvos: synthetic and natural VOS data, DAVIS / YouTube-VOS / static readers, J&F.

Submodules are imported on demand so `import mlvos.data` stays light (no torch, no cv2):
  mlvos.data.synth     procedural DAVIS-layout dataset generator         (numpy, cv2, pillow)
  mlvos.data.datasets  DAVIS / YouTube-VOS / static image+mask readers   (numpy, pillow)
  mlvos.data.clips     training clips: static-image simulation, video sampling (numpy, cv2)
  mlvos.data.metrics, mlvos.data.evaluate   J&F evaluation
  mlvos.data.cli       `mlvos data synth|photos|vtest|check` and `mlvos eval`

Palette PNG masks and RGB frames are read and written by mlvos.palette (shared with the runtime).
"""
