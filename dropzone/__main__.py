from dropzone.cli import main

raise SystemExit(main())
