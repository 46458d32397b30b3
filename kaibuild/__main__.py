from kaibuild.cli import main

raise SystemExit(main())
