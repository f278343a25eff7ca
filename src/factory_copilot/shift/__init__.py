"""The shift handover: at each change of the line's shifts, what the shift that ended leaves the incoming one.

``calendar.py`` tells the shifts apart in the plant's local time, ``handover.py`` writes the handover from the
store and the alarm journal (deterministic: every sentence cites the alarm and audit rows it comes from),
``summary.py`` adds the model's optional paragraph (only sentences that cite rows that exist), ``document.py``
renders it as Markdown, ``pdf.py`` as PDF (fpdf2, imported only when exporting), ``station.py`` runs in the
service (writes, stores, publishes, takes the incoming operator's acknowledgement) and ``cli.py`` is
``factory-copilot shift report``.
"""
