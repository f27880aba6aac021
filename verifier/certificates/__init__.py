"""Certificates from the engines' bounds: LMT's radii and "certified at eps" (``certify``), and the method
registry every command and training's evaluation read (``methods``)."""
