"""`dicom-forwarder send`: a one-shot C-STORE SCU taking DCMTK storescu's options.

Same spellings, meanings and defaults as storescu(1): options may stand anywhere, the
rightmost of mutually exclusive ones wins, and ``@file`` expands to the file's words.
``options`` holds the command line, ``inputs`` the files to send, ``invent`` the changes
made to each data set (+II/+IR/+IS/+IP, -up, -u) and ``runner`` the association and its
C-STORE loop.
"""

from forwarder.send.runner import run

__all__ = ["run"]
