"""A script file that runs the ``fapm`` command, for processes started by file path.

Lightning's DDP launcher starts the other ranks as ``python <script> <arguments>``. Running a
file of the ``fapm`` package itself as a script would put ``src/fapm/`` first on
``sys.path``, where ``fapm/types.py`` would shadow the standard library's ``types``; this
folder holds nothing but :mod:`fapm.relaunch.run`.
"""
